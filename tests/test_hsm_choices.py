"""Pure choices at the PKCS#11 boundary, without a token: pool sizing, key templates, the
protection rule, CKR mapping and the probe's report."""

from __future__ import annotations

import pytest
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.constants import DEFAULT
from pkcs11.exceptions import FunctionNotSupported, PKCS11Error, SessionHandleInvalid

from signer.hsm.functions import error_for
from signer.hsm.jobs import SignQueue, SignRequest
from signer.hsm.keygen import REQUIRED_PROTECTION, exactly, protection_problems
from signer.hsm.mechanisms import private_key_template, public_key_template
from signer.hsm.probe_report import Report, render
from signer.hsm.sizing import SMALLEST_CHUNK, SignTiming, job_digests, plan_pool

LOCAL = SignTiming(wall=50e-6, cpu=50e-6, samples=40)
"""A module on this host: every microsecond of a signature is this host's CPU."""
REMOTE = SignTiming(wall=2.2e-3, cpu=0.1e-3, samples=40)
"""A network HSM: 22 times as long as the CPU it costs here."""


def jobs_for_one_batch(count: int, chunk: int) -> int:
    """How many worker jobs :class:`SignQueue` cuts one batch of ``count`` digests into."""
    queue = SignQueue(chunk)
    queue.put(SignRequest("k", bytes(32 * count), lambda signatures, error: None))
    jobs = 0
    while queue.take() is not None:
        jobs += 1
    return jobs


def test_a_local_module_gets_one_worker_per_core_and_full_chunks() -> None:
    plan = plan_pool(LOCAL, cores=2, workers="auto", max_workers=32, chunk_digests=128)
    assert (plan.workers, plan.wanted, plan.chunk, plan.warning) == (2, 2, 128, None)


def test_a_network_hsm_gets_workers_for_its_waiting_within_the_bound() -> None:
    plan = plan_pool(REMOTE, cores=2, workers="auto", max_workers=32, chunk_digests=128)
    assert (plan.workers, plan.wanted, plan.chunk) == (32, 44, 8)
    assert plan.warning is not None and "max_workers = 32 bounds the pool" in plan.warning
    roomy = plan_pool(REMOTE, cores=2, workers="auto", max_workers=64, chunk_digests=128)
    assert (roomy.workers, roomy.warning) == (44, None)
    # A batch of 1000 reaches every one of the workers (with chunk_digests alone: 8 jobs).
    assert jobs_for_one_batch(1000, roomy.chunk) >= roomy.workers
    assert jobs_for_one_batch(1000, 128) == 8


def test_a_fixed_pool_too_small_for_the_latency_is_warned_about() -> None:
    plan = plan_pool(REMOTE, cores=2, workers=2, max_workers=32, chunk_digests=128)
    assert (plan.workers, plan.chunk) == (2, 128)
    assert plan.warning is not None
    assert "2 workers keep about 5% of the 2 cores busy" in plan.warning
    assert 'set [hsm] workers = "auto" (it would start 32) or workers = 44' in plan.warning
    local = plan_pool(LOCAL, cores=2, workers=2, max_workers=32, chunk_digests=128)
    assert local.warning is None


def test_without_a_measurement_the_pool_is_sized_as_configured() -> None:
    plan = plan_pool(None, cores=4, workers="auto", max_workers=32, chunk_digests=128)
    assert (plan.workers, plan.chunk) == (4, 128)
    assert plan_pool(None, cores=4, workers=0, max_workers=32, chunk_digests=128).workers == 4
    assert plan_pool(None, cores=4, workers=3, max_workers=32, chunk_digests=16).chunk == 16


def test_jobs_shrink_with_workers_per_core_within_chunk_digests_and_the_floor() -> None:
    assert job_digests(128, cores=2, workers=2) == 128
    assert job_digests(128, cores=2, workers=4) == 64
    assert job_digests(128, cores=2, workers=32) == 8
    assert job_digests(128, cores=2, workers=256) == SMALLEST_CHUNK
    # Fewer workers than cores never makes a job larger than configured.
    assert job_digests(128, cores=8, workers=2) == 128
    # A configured size below the floor is kept.
    assert job_digests(4, cores=2, workers=32) == 4


def test_templates_name_only_what_signer_needs() -> None:
    private = private_key_template("k", b"\x01\x02")
    assert private == {
        Attribute.CLASS: ObjectClass.PRIVATE_KEY,
        Attribute.KEY_TYPE: KeyType.EC,
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.SIGN: True,
        Attribute.LABEL: "k",
        Attribute.ID: b"\x01\x02",
    }
    public = public_key_template("k", None, b"\x06\x08params")
    assert Attribute.ID not in public and public[Attribute.VERIFY] is True
    assert Attribute.ID not in private_key_template("k", None)
    sent = exactly(private_key_template("k", None))
    # python-pkcs11's own defaults are withdrawn (DEFAULT), signer's values kept.
    assert sent[Attribute.DECRYPT] is DEFAULT and sent[Attribute.ID] is DEFAULT
    assert sent[Attribute.SIGN] is True and sent[Attribute.EXTRACTABLE] is False


def test_protection_rule_refuses_what_is_wrong_or_unreadable() -> None:
    assert protection_problems(dict(REQUIRED_PROTECTION)) == []
    flags: dict[str, bool | None] = {**REQUIRED_PROTECTION, "extractable": True, "derive": None}
    assert protection_problems(flags) == ["extractable=True", "derive=None"]


def test_return_values_become_python_pkcs11_errors() -> None:
    assert isinstance(error_for(0x54, "C_CopyObject"), FunctionNotSupported)
    assert isinstance(error_for(0xB3, "C_Sign"), SessionHandleInvalid)
    unknown = error_for(0x1234, "C_Sign")
    assert type(unknown) is PKCS11Error and "C_Sign returned CKR 0x00001234" in str(unknown)


@pytest.mark.parametrize("required_ok", [True, False])
def test_probe_report_names_what_is_missing(required_ok: bool) -> None:
    report = Report("/opt/hsm/lib.so")
    report.add("sign", required_ok, "2 calls")
    report.add("copy a key into the session", False, "not supported", required=False)
    report.recommend("hsm", "copy_keys_to_session = false")
    text = render(report)
    assert text.startswith("PKCS#11 module /opt/hsm/lib.so\n")
    assert "[hsm]\ncopy_keys_to_session = false\n" in text
    assert report.can_run_signer is required_ok
    if required_ok:
        assert text.endswith("This module can run signer.\n")
    else:
        assert report.missing == ["sign"]
        assert "MISSING" in text and text.endswith("This module cannot run signer: sign.\n")

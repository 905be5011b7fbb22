"""What ``signer hsm probe`` found, as a capability table and recommended settings (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Check:
    """One capability signer needs (``required``) or can use, and what the module did."""

    capability: str
    ok: bool | None
    """True: works; False: does not; None: not tried, because something it needs failed."""
    required: bool
    detail: str


@dataclass
class Report:
    """Every check of one probe run and the settings it recommends (TOML lines by table)."""

    module: str
    checks: list[Check] = field(default_factory=list)
    settings: dict[str, list[str]] = field(default_factory=dict)

    def add(self, capability: str, ok: bool | None, detail: str, required: bool = True) -> bool:
        """Record a check; returns ``ok`` is True, for chaining the checks that need it."""
        self.checks.append(Check(capability, ok, required, detail))
        return ok is True

    def recommend(self, table: str, line: str) -> None:
        """A setting (``key = value  # why``) for ``[table]``."""
        self.settings.setdefault(table, []).append(line)

    @property
    def missing(self) -> list[str]:
        """The required capabilities that did not work (or could not be tried)."""
        return [c.capability for c in self.checks if c.required and c.ok is not True]

    @property
    def can_run_signer(self) -> bool:
        """True when every required capability works."""
        return bool(self.checks) and not self.missing


def _result(check: Check) -> str:
    if check.ok is None:
        return "not run"
    if check.ok:
        return "ok"
    return "MISSING" if check.required else "no"


def render(report: Report) -> str:
    """The capability table, then the recommended settings, as printed by the command."""
    width = max(len(c.capability) for c in report.checks) if report.checks else 10
    lines = [f"PKCS#11 module {report.module}", ""]
    lines.append(f"{'capability':<{width}}  {'result':<8} {'needed':<8} detail")
    for check in report.checks:
        needed = "required" if check.required else "optional"
        lines.append(f"{check.capability:<{width}}  {_result(check):<8} {needed:<8} {check.detail}")
    lines.append("")
    if report.settings:
        lines.append("Recommended settings:")
        for table, entries in report.settings.items():
            lines.append(f"[{table}]")
            lines.extend(entries)
        lines.append("")
    if report.can_run_signer:
        lines.append("This module can run signer.")
    else:
        lines.append(f"This module cannot run signer: {', '.join(report.missing)}.")
    return "\n".join(lines) + "\n"

"""Checkpoint retention beside the log: ``signer audit prune-checkpoints``.

The writer keeps one file per checkpoint in ``checkpoints/`` (one a minute by default, half a
million a year). On the appliance an older checkpoint adds little: a newer one over an intact
chain proves the same prefix, and against someone holding the PIN only copies kept elsewhere
count. What must stay is what the auditor's mirror does not hold yet. So this keeps the newest
``keep`` checkpoint files, every checkpoint above the size the mirror reports (``mirrored``,
"N in total" in ``signer audit mirror``'s output), and always ``checkpoint.latest``. It only
ever deletes checkpoint files, never records; run it while the daemon runs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from signer.audit.segments import CHECKPOINT_DIR, list_checkpoint_files
from signer.cli_args import count, positive_int
from signer.cli_exit import ExitCode


@dataclass(frozen=True)
class Pruned:
    """Checkpoint files removed and kept (sizes)."""

    removed: tuple[int, ...]
    kept: tuple[int, ...]


def prune_checkpoints(directory: Path, keep: int, mirrored: int, dry_run: bool = False) -> Pruned:
    """Remove checkpoint files at sizes up to ``mirrored``, except the newest ``keep``."""
    if keep < 1:
        raise ValueError("keep at least the newest checkpoint (keep >= 1)")
    folder = directory / CHECKPOINT_DIR
    files = sorted(
        (int(path.stem), path) for path in list_checkpoint_files(directory) if path.parent == folder
    )
    newest = {size for size, _ in files[-keep:]}
    removed, kept = [], []
    for size, path in files:
        if size in newest or size > mirrored:
            kept.append(size)
            continue
        if not dry_run:
            path.unlink()
        removed.append(size)
    return Pruned(tuple(removed), tuple(kept))


def add_subcommand(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``prune-checkpoints`` under ``signer audit``."""
    text = (
        "remove old checkpoint files beside the log: keep the newest N and every checkpoint"
        " above the size the auditor's mirror holds"
    )
    parser = subparsers.add_parser("prune-checkpoints", help=text, description=text)
    parser.add_argument("--dir", required=True, type=Path, help="audit log directory")
    parser.add_argument(
        "--keep", type=positive_int, default=1000, help="newest checkpoints to keep (1000)"
    )
    parser.add_argument(
        "--mirrored",
        type=count,
        required=True,
        metavar="SIZE",
        help="records the auditor's mirror holds (`signer audit mirror` prints it)",
    )
    parser.add_argument("--dry-run", action="store_true", help="only say what would go")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if not args.dir.is_dir():
        raise FileNotFoundError(2, "audit directory does not exist", str(args.dir))
    pruned = prune_checkpoints(args.dir, args.keep, args.mirrored, args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    span = f" (sizes {pruned.removed[0]}..{pruned.removed[-1]})" if pruned.removed else ""
    print(f"{verb} {len(pruned.removed)} checkpoint files{span}; kept {len(pruned.kept)}")
    return ExitCode.OK

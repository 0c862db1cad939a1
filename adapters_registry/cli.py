"""``adapter-registry``: the command line of the registry.

Exit codes: 0 success; 1 ``verify`` found problems; 2 a user error (bad name, unknown
version, invalid artifact, fingerprint mismatch, ...), reported as one ``error: ...`` line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from adapters_registry.artifact import Limits
from adapters_registry.errors import RegistryError
from adapters_registry.names import parse_ref
from adapters_registry.peft_import import import_peft
from adapters_registry.store import ROOT_ENV, Registry
from adapters_registry.versions import VersionInfo
from modeling.cli_parser import OneLineParser
from modeling.tasks import BACKBONE_FAMILIES, DEFAULT_FAMILY

EXIT_PROBLEMS = 1
EXIT_USAGE = 2


def _build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="adapter-registry",
        description="Publish, version, alias, verify and fetch adapter artifacts.",
    )
    parser.add_argument(
        "--root", help=f"registry path or fsspec URL (default ${ROOT_ENV} or ./.registry)"
    )
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=Limits.max_artifact_bytes,
        help="largest artifact accepted, in bytes",
    )
    parser.add_argument(
        "--max-files", type=int, default=Limits.max_files, help="most files in one artifact"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_version_commands(commands)
    _add_maintenance_commands(commands)
    return parser


def _add_version_commands(commands: argparse._SubParsersAction) -> None:
    """publish, list, show, pull, alias set, yank."""
    publish = commands.add_parser("publish", help="publish an artifact directory as a version")
    publish.add_argument("dir")
    publish.add_argument("--name", required=True)
    publish.add_argument("--alias", help="also point this alias at the new version")

    listing = commands.add_parser("list", help="list versions (yanked ones are marked)")
    listing.add_argument("name", nargs="?")

    show = commands.add_parser("show", help="print one version as JSON")
    show.add_argument("ref", help="NAME, NAME:VERSION or NAME@ALIAS")

    pull = commands.add_parser("pull", help="fetch and verify a version into a directory")
    pull.add_argument("ref", help="NAME, NAME:VERSION or NAME@ALIAS")
    pull.add_argument("--out", required=True)
    pull.add_argument("--fingerprint", help="refuse unless trained for this base model")
    pull.add_argument("--force", action="store_true", help="replace a non-empty --out")

    alias = commands.add_parser("alias", help="manage aliases")
    alias_commands = alias.add_subparsers(dest="alias_command", required=True)
    alias_set = alias_commands.add_parser("set", help="point NAME@ALIAS at VERSION")
    alias_set.add_argument("name")
    alias_set.add_argument("alias")
    alias_set.add_argument("version")

    yank = commands.add_parser("yank", help="hide a version from resolution (kept for audit)")
    yank.add_argument("ref", help="NAME:VERSION")
    yank.add_argument("--reason", default="")


def _add_maintenance_commands(commands: argparse._SubParsersAction) -> None:
    """verify, gc, import-peft."""
    verify = commands.add_parser("verify", help="check every stored byte")
    verify.add_argument("name", nargs="?")

    gc = commands.add_parser("gc", help="delete blobs that no version uses")
    gc.add_argument(
        "--min-age",
        type=float,
        default=3600.0,
        help="keep blobs younger than this many seconds (default 3600)",
    )

    peft = commands.add_parser(
        "import-peft", help="turn a PEFT LoRA/prompt folder into an artifact"
    )
    peft.add_argument("dir")
    peft.add_argument("--out", required=True, help="artifact directory to create")
    peft.add_argument("--fingerprint", required=True, help="base-model fingerprint (sha256:...)")
    peft.add_argument("--task", action="append", help="task served (repeatable; default caption)")
    peft.add_argument("--family", default=DEFAULT_FAMILY, choices=BACKBONE_FAMILIES,
                      help="the backbone's family, whose task prompts the artifact records "
                           f"(`train-adapter backbone info` prints it; default {DEFAULT_FAMILY})")
    peft.add_argument("--name", help="also publish the artifact under this name")
    peft.add_argument("--alias", help="with --name: alias of the published version")


def _list_row(info: VersionInfo) -> tuple[str, ...]:
    """One row of ``list``; a version whose record is corrupt shows ``-`` and its problem."""
    aliases = ",".join(info.aliases) + (" (yanked)" if info.yanked else "")
    if info.problem:
        return (info.name, str(info.version), "-", "-", aliases, "-", info.problem)
    tasks = ",".join(info.manifest["tasks"])
    return (info.name, str(info.version), info.created, tasks, aliases, info.fingerprint[:19], "")


def _list(registry: Registry, name: str | None) -> int:
    rows = [("NAME", "VERSION", "CREATED", "TASKS", "ALIASES", "FINGERPRINT", "PROBLEM")]
    rows += [_list_row(info) for info in registry.index(name)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def _verify(registry: Registry, name: str | None) -> int:
    problems = registry.verify(name)
    for problem in problems:
        print(problem)
    if problems:
        print(f"error: {len(problems)} problem(s) found", file=sys.stderr)
        return EXIT_PROBLEMS
    print("ok")
    return 0


def _run(args: argparse.Namespace) -> int:
    registry = Registry(args.root, max_artifact_bytes=args.max_bytes, max_files=args.max_files)
    command = args.command
    if command == "publish":
        version = registry.publish(args.dir, args.name, alias=args.alias)
        print(f"{args.name}:{version}")
    elif command == "list":
        return _list(registry, args.name)
    elif command == "show":
        info = registry.resolve(args.ref, include_yanked=True)
        print(json.dumps(info.to_dict(), indent=2, sort_keys=True))
    elif command == "pull":
        info = registry.pull(args.ref, args.out, args.fingerprint, overwrite=args.force)
        print(f"pulled {info.ref} into {args.out}")
    elif command == "alias":
        registry.set_alias(args.name, args.alias, args.version)
        print(f"{args.name}@{args.alias} -> {args.name}:{args.version}")
    elif command == "yank":
        ref = parse_ref(args.ref)
        if ref.version is None:
            raise RegistryError(f"yank needs NAME:VERSION, got {args.ref!r}")
        print(f"yanked {registry.yank(ref.name, ref.version, args.reason).ref}")
    elif command == "verify":
        return _verify(registry, args.name)
    elif command == "gc":
        for blob in registry.gc(args.min_age):
            print(f"removed sha256/{blob}")
    elif command == "import-peft":
        tasks = tuple(args.task or ("caption",))
        import_peft(args.dir, args.out, args.fingerprint, tasks, args.family)
        print(f"wrote {args.out}")
        if args.name:
            print(f"{args.name}:{registry.publish(args.out, args.name, alias=args.alias)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    try:
        args = _build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return _run(args)
    except (RegistryError, OSError) as exc:
        message = str(exc).replace("\n", " ")
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

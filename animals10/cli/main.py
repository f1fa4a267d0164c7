"""The `animals10` command: one subcommand per job. For a command `foo-bar`, its module offers
`add_foo_bar_arguments(parser)`, `run_foo_bar(args) -> int` and `FOO_BAR_EXAMPLES` (the end of its --help); only
the module of the command that runs is imported. Errors a user can cause are printed as one sentence,
without a traceback. The console shows our own lines; Ray's go to its log files unless `-v` is given."""

from __future__ import annotations

import argparse
import importlib
import sys

from animals10 import __version__
from animals10.cli.console import configure_console
from animals10.errors import Animals10Error

# subcommand -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS = {
    "train": ("animals10.cli.train", "train models with Ray Train and write artifacts"),
    "infer": ("animals10.cli.infer", "classify a folder or bucket of photos into Parquet with Ray Data"),
    "serve": ("animals10.cli.serve", "serve a model over HTTP with Ray Serve"),
    "evaluate": ("animals10.cli.evaluate", "score models and write the comparison report"),
    "export": ("animals10.cli.export", "export a model artifact to ONNX or TorchScript, to run outside Ray"),
    "demo-data": ("animals10.cli.demo", "write a small synthetic labelled photo set"),
    "demo": ("animals10.cli.demo", "generate demo data, train both models, print the comparison"),
}


def find_user_error(error: BaseException) -> Animals10Error | None:
    """Our error inside whatever wrapped it (Ray wraps errors raised in tasks and trainers)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, Animals10Error):
            return error
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="animals10", description="Animals-10 image classification on Ray.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and Ray's own output")
    parser.add_argument("--version", action="version", version=f"animals10 {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if name != command:
            commands.add_parser(name, help=help_text, description=help_text)
            continue
        module, stem = importlib.import_module(module_name), name.replace("-", "_")
        epilog = f"examples:\n{getattr(module, f'{stem.upper()}_EXAMPLES')}"
        sub = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        getattr(module, f"add_{stem}_arguments")(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    configure_console(args.verbose)
    run = getattr(importlib.import_module(COMMANDS[args.command][0]), f"run_{args.command.replace('-', '_')}")
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - user errors become one sentence
        user_error = find_user_error(error)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

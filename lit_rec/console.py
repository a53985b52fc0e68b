"""The `lit-rec` command: `lit-rec fit|validate|test|predict ...` as train.py, `lit-rec reproduce ...` as
`python -m lit_rec.reproduce`; `--config NAME` names a shipped config (lit_rec.config_files)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Runs the subcommand; a bare `--config` name resolves to the shipped configs/<name>.yaml first."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["reproduce"]:
        from lit_rec.reproduce.cli import main as reproduce

        sys.exit(reproduce(args[1:]))
    from lit_rec.cli import main as train, print_error
    from lit_rec.config_files import resolve_config_args

    try:
        args = resolve_config_args(args)
    except FileNotFoundError as error:
        print_error(error)
        sys.exit(2)
    if argv is None:  # the command line itself: LightningCLI (and DDP's relaunch of it) reads sys.argv
        sys.argv[1:] = args
        train()
    else:
        train(args)


if __name__ == "__main__":
    main()

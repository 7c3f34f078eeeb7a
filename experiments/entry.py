"""What every entry point shares: logging, and the user's mistakes as one line instead of a traceback.

``galen <command>`` (``experiments.cli``) and ``python -m experiments.<command>`` (what ``ray job submit``
runs: ``search``, ``study``, ``compress``) both run a command through :func:`run`. The modules import this one,
never the command line, so there is no import cycle between ``cli`` and the commands.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from experiments.rundir import RunDirError
from experiments.sweep import TrialsFailedError
from hardware.client import TargetUnavailableError
from workloads.checkpoints import CheckpointError
from workloads.models import ModelNotAvailableError

# The user's mistakes get a one-line error (names, values, what is allowed); anything else is a
# bug and keeps its traceback. ValueError covers unknown models/datasets and bad config values,
# FileNotFoundError a dataset found nowhere.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    CheckpointError,
    ModelNotAvailableError,
    TargetUnavailableError,
    RunDirError,
    FileExistsError,
    TrialsFailedError,
)

OUR_LOGGERS = ("galen", "workloads", "compression", "hardware", "envs", "agents", "experiments")


def setup_logging(verbose: bool) -> None:
    """Our loggers at INFO; the libraries' (ONNX Runtime's quantizer logs every bias copy on the root logger) at WARNING."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s")
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


def run(command: str, handler: Callable[[argparse.Namespace], object], args: argparse.Namespace) -> int:
    """Run ``handler(args)``; a user error prints ``galen <command>: error: ...`` and returns 1 (``--verbose``: raises)."""
    verbose = bool(getattr(args, "verbose", False))
    setup_logging(verbose)
    try:
        handler(args)
    except USER_ERRORS as error:
        if verbose:
            raise
        message = str(error).removeprefix(f"galen {command}: ")  # messages that name the command say it once
        print(f"galen {command}: error: {message}", file=sys.stderr)
        return 1
    return 0


def module_main(command: str, build_parser: Callable[[argparse.ArgumentParser], object], handler: Callable, argv: list[str] | None) -> int:
    """``python -m experiments.<command>``: the command's own parser (plus ``-v``), then :func:`run`."""
    doc = sys.modules[build_parser.__module__].__doc__  # the command's own description, as galen <command> --help shows it
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog=f"python -m experiments.{command}", description=doc, formatter_class=formatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    build_parser(parser)
    return run(command, handler, parser.parse_args(sys.argv[1:] if argv is None else argv))

"""What every command-line tool shares: one-line errors and strict flag parsing.

A bad argument ends a tool with ``error: <one line>`` on stderr, a non-zero exit code and no
traceback; unknown flags (also in flagfiles) are errors, never ignored.
"""

from __future__ import annotations

import sys

from absl import flags


def fail(message: str, code: int = 2):
    """One line on stderr, exit ``code``, no traceback."""
    message = " ".join(str(message).split())
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


HELP_ARGS = ("-h", "--help", "--helpfull", "--helpshort", "-?")


def flags_parser(flag_values: flags.FlagValues = flags.FLAGS, hint: str = "see --helpfull"):
    """An absl ``flags_parser`` whose unknown or malformed flags are one line and exit code 2."""

    def parse(argv):
        if any(a in HELP_ARGS for a in argv[1:]):  # absl would exit 1 after help; asking for help is no error
            import os

            print(f"usage: {os.path.basename(argv[0])} [--flag=value ...]\n")
            print(flag_values.get_help())
            sys.exit(0)
        try:
            return flag_values(argv)
        except flags.Error as e:
            fail(f"{e}; {hint}")
        except UnicodeDecodeError:  # absl reads a --flagfile as text
            files = [a.split("=", 1)[1] for a in argv if a.lstrip("-").startswith("flagfile=")]
            fail(f"a --flagfile is not UTF-8 text ({', '.join(files) or 'see --flagfile'}); restore it or pass another")

    return parse


def parse_args(flag_values: flags.FlagValues, argv, doc: str, usage: str):
    """Positional arguments of a tool with its own ``FlagValues``; prints help and returns None
    for ``-h``/``--help``; a bad flag is one line and exit code 2."""
    if any(a in ("-h", "--help", "--helpfull", "-?") for a in argv[1:]):
        print(doc)
        print(usage)
        print(flag_values.get_help())
        return None
    try:
        return flag_values(list(argv))[1:]
    except flags.Error as e:
        fail(f"{e}; {usage}")

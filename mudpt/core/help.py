"""The command line's help format, one definition for every command module."""

from __future__ import annotations

import argparse

__all__ = ["DefaultsHelpFormatter"]


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" only where the help does not already say its default, and
    never "(default: None)" (a help that explains what leaving it out means says more) nor
    "(default: False)" for an on/off flag."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text.lower() or action.default in (None, argparse.SUPPRESS) or not action.option_strings
                or action.nargs == 0):  # an on/off flag: its default is that it is off
            return text
        return super()._get_help_string(action)

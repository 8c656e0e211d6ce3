"""What may be printed: credentials removed by structure, not only by name.

Three kinds of text can carry a credential into a log line, an error or the metrics JSON
(which ends up in a StagingMerge's status, readable by anyone who can read the resource):

- the value of a storage option or cloud environment variable whose name says secret
  (`AWS_SECRET_ACCESS_KEY`, `azure_storage_sas_token`, ...): replaced wherever it occurs;
- the user-info of any URL (`http://user:password@proxy:3128`, a password in
  `abfss://container:KEY@account...`), in any option value or message: the password
  always goes; the user part too, except the container of an Azure URI, which is where
  that URI spells its container (`abfss://container@account.dfs.core.windows.net`);
- the command line itself: a mistyped flag's value (`--storage-options KEY=secret`) is
  unknown to the parser, so it can say nothing about it; `argv_for_message` shows an
  unrecognized option by its name and any value as `***`.

`register` keeps the values of the options a run uses, so every later message (each log
line, through logs.py's processor, and the metrics error) is scrubbed of them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import unquote

SECRET_HINTS = ("SECRET", "TOKEN", "KEY", "PASSWORD", "SAS", "CREDENTIAL", "SIGNATURE")
ENV_PREFIXES = ("AWS_", "AZURE_", "GOOGLE_", "GCS_")
MASK = "***"
_AZURE_SCHEMES = ("abfs", "abfss", "az", "azure", "wasb", "wasbs")
_MIN_SECRET = 4  # shorter values would blank unrelated text ("eu" in every region)

# scheme://user[:password]@ — user-info as RFC 3986 puts it (no '/', '@' or space inside)
_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*)://(?P<user>[^/@\s:?#]*)(?::(?P<password>[^/@\s?#]*))?@"
)
# `--flag=value` in a parser message (an ambiguous or mistyped option with its value)
_FLAG_VALUE = re.compile(r"(?P<flag>(?<![\w-])--?[A-Za-z0-9][\w.-]*)=\S*")

_registered: set[str] = set()


def is_secret_name(key: str) -> bool:
    return any(hint in key.upper() for hint in SECRET_HINTS)


def strip_userinfo(text: str) -> str:
    """Every URL in `text` without its password, and without its user but for an Azure
    URI's container."""

    def replace(match: re.Match[str]) -> str:
        scheme, user, password = match["scheme"], match["user"], match["password"]
        keep = scheme.lower() in _AZURE_SCHEMES and user
        if password is None and keep:
            return match.group(0)
        return f"{scheme}://{user}:{MASK}@" if keep else f"{scheme}://{MASK}@"

    return _USERINFO.sub(replace, text)


def passwords_in(value: str) -> list[str]:
    """The user-info secrets a value's URLs carry, as written and percent-decoded."""
    found = []
    for match in _USERINFO.finditer(value):
        parts = [match["password"]]
        if match["scheme"].lower() not in _AZURE_SCHEMES:
            parts.append(match["user"])
        for part in parts:
            if part:
                found += [part, unquote(part)]
    return found


def redact_options(options: Mapping[str, str]) -> dict[str, str]:
    """The options as they may be logged: secret-named values replaced, user-info gone."""
    return {
        key: MASK if is_secret_name(key) else strip_userinfo(value)
        for key, value in options.items()
    }


def secrets_of(options: Mapping[str, str]) -> set[str]:
    """Every substring of these options (and the cloud environment) never to print."""
    env = {k: v for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIXES)}
    found = set(_registered)
    for key, value in {**env, **options}.items():
        if is_secret_name(key):
            found.add(value)
        found.update(passwords_in(value))
    return {s for s in found if len(s) >= _MIN_SECRET}


def register(options: Mapping[str, str]) -> None:
    """Remember the secrets of the options this run uses: every later scrub removes them."""
    _registered.update(secrets_of(options))


def scrub(message: str, options: Mapping[str, str] | None = None) -> str:
    """`message` without any secret of `options`, the registered options or the cloud
    environment, and without URL user-info."""
    for secret in sorted(secrets_of(options or {}), key=len, reverse=True):
        message = message.replace(secret, MASK)
    return strip_userinfo(message)


def argv_token(token: str) -> str:
    """One command-line token the parser did not recognize, as it may be shown: an option
    by its name (a value given with `=` masked), anything else (a value) masked."""
    if token.startswith("-") and len(token) > 1:
        name, sep, _value = token.partition("=")
        return f"{name}={MASK}" if sep else name
    return MASK


def argv_for_message(tokens: Iterable[str]) -> str:
    return " ".join(argv_token(t) for t in tokens)


def parser_message(message: str) -> str:
    """An argument parser's own message with every `--flag=value` value masked."""
    return _FLAG_VALUE.sub(lambda m: f"{m['flag']}={MASK}", message)

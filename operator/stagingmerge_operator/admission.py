"""What a Kubernetes API server would refuse in the Job built from a spec (pure).

The CRD's schema cannot say all of it, and a Job the API server refuses (422) would
otherwise be retried forever with no status written. So the spec is checked here,
with the rules apimachinery applies to the fields the operator copies into the Job:
names, label keys and values, quantities, tolerations, the image reference. A
violation is an InvalidSpec, with the field and the rule in one line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAME_PART = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_QUANTITY = re.compile(
    r"([+-]?[0-9]+(\.[0-9]*)?|[+-]?\.[0-9]+)"  # the number
    r"(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][-+]?[0-9]+)?"  # binary, decimal or exponent
)
_IMAGE = re.compile(  # [registry[:port]/]repository[:tag][@sha256:digest], no white space
    r"[a-z0-9]+([._-][a-z0-9]+|/|:[0-9]+/)*[a-zA-Z0-9._/-]*"
    r"(:[\w][\w.-]{0,127})?(@sha256:[a-f0-9]{64})?"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
            "P": Decimal("1e15"), "E": Decimal("1e18")}  # fmt: skip
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


class RefusedField(ValueError):  # noqa: N818 - raised for a field, read as such
    """One field of the spec an API server would refuse; the message says which and why."""


def dns_subdomain(value: str, field: str) -> None:
    if not (len(value) <= 253 and _DNS_SUBDOMAIN.fullmatch(value)):
        raise RefusedField(
            f"{field} {value!r} is not a valid name: lowercase letters, digits, '-' and '.',"
            " starting and ending with a letter or digit, at most 253 characters"
        )


def qualified_name(value: str, field: str) -> None:
    """A label key or resource name: an optional DNS-subdomain prefix and '/', then a
    name part of at most 63 characters."""
    prefix, slash, name = value.rpartition("/")
    if slash and prefix:
        dns_subdomain(prefix, f"{field} prefix of")
    if not (len(name) <= 63 and _NAME_PART.fullmatch(name)):
        raise RefusedField(
            f"{field} {value!r} is not a valid key: letters, digits, '-', '_' and '.',"
            " starting and ending with a letter or digit, at most 63 characters"
            " (with an optional DNS-name prefix and '/')"
        )


def label_value(value: str, field: str) -> None:
    if not (len(value) <= 63 and _LABEL_VALUE.fullmatch(value)):
        raise RefusedField(
            f"{field} {value!r} is not a valid label value: at most 63 letters, digits, '-',"
            " '_' and '.', starting and ending with a letter or digit"
        )


def quantity(value: Any, field: str) -> Decimal:
    """A resource quantity ("500m", "2Gi", "1.5", 3) as a number, or RefusedField."""
    text = str(value).strip() if not isinstance(value, bool) else ""
    match = _QUANTITY.fullmatch(text)
    if not match:
        raise RefusedField(f"{field} {value!r} is not a quantity (such as 500m, 2, 1.5Gi or 512Mi)")
    number, suffix = Decimal(match.group(1)), match.group(3) or ""
    try:
        if suffix in _BINARY:
            return number * _BINARY[suffix]
        if suffix[:1] in ("e", "E"):
            return number * Decimal(10) ** int(suffix[1:])
        return number * _DECIMAL[suffix]
    except (InvalidOperation, KeyError):
        raise RefusedField(f"{field} {value!r} is not a quantity") from None


def image(value: str, field: str) -> None:
    if not (len(value) <= 4096 and _IMAGE.fullmatch(value)):
        raise RefusedField(
            f"{field} {value!r} is not an image reference (registry/repository[:tag][@digest])"
        )


def resources(value: Mapping[str, Any], field: str) -> None:
    """requests and limits: resource names, quantities, and requests <= limits."""
    parsed: dict[str, dict[str, Decimal]] = {}
    for part in ("requests", "limits"):
        for name, amount in (value.get(part) or {}).items():
            qualified_name(name, f"{field}.{part} key")
            number = quantity(amount, f"{field}.{part}.{name}")
            if number < 0:
                raise RefusedField(f"{field}.{part}.{name} must not be negative")
            parsed.setdefault(part, {})[name] = number
    for name, request in parsed.get("requests", {}).items():
        limit = parsed.get("limits", {}).get(name)
        if limit is not None and request > limit:
            raise RefusedField(f"{field}.requests.{name} must be less than or equal to its limit")


def toleration(value: Mapping[str, Any], field: str) -> None:
    """The PodSpec rules for one toleration."""
    key, operator, effect = (
        value.get("key") or "",
        value.get("operator") or "Equal",
        value.get("effect"),
    )
    if operator not in ("Exists", "Equal"):
        raise RefusedField(f"{field}.operator must be Exists or Equal, got {operator!r}")
    if key:
        qualified_name(key, f"{field}.key")
    elif operator != "Exists":
        raise RefusedField(f"{field}: an empty key needs operator Exists")
    if operator == "Exists" and value.get("value"):
        raise RefusedField(f"{field}: operator Exists takes no value")
    if operator == "Equal" and value.get("value"):
        label_value(str(value["value"]), f"{field}.value")
    if effect is not None and effect not in _EFFECTS:
        raise RefusedField(f"{field}.effect must be one of {', '.join(_EFFECTS)}")
    if value.get("tolerationSeconds") is not None and effect != "NoExecute":
        raise RefusedField(f"{field}.tolerationSeconds needs effect NoExecute")

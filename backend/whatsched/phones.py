"""Phone numbers: anything a person types, to E.164 with `phonenumbers`, or a reason why not."""

from __future__ import annotations

import re
from dataclasses import dataclass

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType

from whatsched.contracts import E164_PATTERN

E164 = re.compile(E164_PATTERN)  # the guide's pattern (contracts/limits.json), also checked in the database
# Lines that can never hold a WhatsApp account.
_NOT_MOBILE = {
    PhoneNumberType.FIXED_LINE,
    PhoneNumberType.TOLL_FREE,
    PhoneNumberType.PREMIUM_RATE,
    PhoneNumberType.SHARED_COST,
    PhoneNumberType.PAGER,
    PhoneNumberType.UAN,
    PhoneNumberType.VOICEMAIL,
}


@dataclass(frozen=True)
class Parsed:
    e164: str | None
    reason: str | None  # None when e164 is set

    @property
    def ok(self) -> bool:
        return self.e164 is not None


def normalize(raw: str | None, default_country: str | None = None) -> Parsed:
    """ "+56 9 1234 5678", "0056912345678", "(9) 1234-5678" with CL, ... → "+56912345678"."""
    text = (raw or "").strip()
    if not text:
        return Parsed(None, "empty phone number")
    if len(text) > 40:
        return Parsed(None, "too long to be a phone number")
    text = re.sub(r"^00(?=[1-9])", "+", re.sub(r"[\s.\-()/]", "", text)) if not text.startswith("+") else text
    region = (default_country or "").upper() or None
    try:
        number = phonenumbers.parse(text, None if text.startswith("+") else region)
    except NumberParseException as exc:
        if exc.error_type == NumberParseException.INVALID_COUNTRY_CODE and not text.startswith("+"):
            return Parsed(None, "national number without a default country; use the +country format")
        return Parsed(None, "not a phone number")
    # A number of the right length for its country is accepted even when phonenumbers' metadata does
    # not know its range yet (the guide's own +56 9 1234 5678 is such a number): the bridge asks
    # WhatsApp before sending. Numbers that are known to be fixed lines are refused.
    if not phonenumbers.is_possible_number(number):
        return Parsed(None, "wrong length for a number of its country")
    # number_type is UNKNOWN for a number is_valid_number would refuse, so one call answers both
    # (is_valid_number would match the number against its country's patterns a second time).
    if phonenumbers.number_type(number) in _NOT_MOBILE:
        return Parsed(None, "not a mobile number (WhatsApp needs a mobile line)")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if not E164.fullmatch(e164):
        return Parsed(None, "not a valid E.164 number")
    return Parsed(e164, None)

#!/usr/bin/env python3
"""Golden vectors for identity normalization, from reference implementations.

Phones: Python `phonenumbers` (a port of Google's libphonenumber) at the
metadata version the Rust `phonenumber` crate carries. E-mails: the `idna`
package (IDNA 2008 with UTS 46 mapping) and `email-validator` for the address
syntax. Writes phones.jsonl and emails.jsonl beside this file, one case a line:
{"raw": ..., "region": ... (phones), "expected": "<normalized>" or null}.

The expected values apply the directory's own rules (docs/contract.md,
"Identity and normalization") on top of the references:
- junk words and junk addresses are never identifiers;
- a leading "00" is an international prefix whatever the tenant's region;
- a phone number with an extension is not an identifier: it names a
  switchboard, which many customers share;
- a national number of one repeated digit is junk;
- an e-mail is lower-cased whole (local part too).

Regenerate with:
    python3 -m venv /tmp/vectors && /tmp/vectors/bin/pip install -r tests/vectors/requirements.txt
    /tmp/vectors/bin/python tests/vectors/generate.py
The output is deterministic; commit it with the change that needs it.
"""

import json
import os
import random

import idna
import phonenumbers
from email_validator import EmailNotValidError, validate_email
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType

HERE = os.path.dirname(os.path.abspath(__file__))
REGIONS = ["CZ", "SK", "DE", "AT", "PL", "GB", "US", "UA"]
DERIVED_SAMPLE = 4000
JUNK_WORDS = {"", "null", "undefined", "n/a", "na", "none", "nil", "-", "unknown"}
JUNK_EMAILS = {"test@test.com", "test@example.com", "a@a.com", "noreply@noreply.com"}
TYPES = [
    PhoneNumberType.MOBILE,
    PhoneNumberType.FIXED_LINE,
    PhoneNumberType.FIXED_LINE_OR_MOBILE,
    PhoneNumberType.TOLL_FREE,
    PhoneNumberType.PREMIUM_RATE,
    PhoneNumberType.VOIP,
]


def expected_phone(raw, region):
    text = raw.strip()
    if text.lower() in JUNK_WORDS:
        return None
    if text.startswith("00"):
        text = "+" + text[2:]
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException:
        return None
    if number.extension or not phonenumbers.is_valid_number(number):
        return None
    national = str(number.national_number)
    if len(set(national)) == 1:
        return None
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


def spellings(number, rng):
    """How people type one number: every format, with the punctuation they use."""
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    international = phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
    national = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
    rfc3966 = phonenumbers.format_number(number, PhoneNumberFormat.RFC3966)
    code = str(number.country_code)
    nsn = phonenumbers.national_significant_number(number)
    groups = international.split(" ", 1)[1] if " " in international else nsn
    out = [
        e164,
        international,
        national,
        rfc3966,
        "00" + e164[1:],
        "00 " + international[1:],
        f"(+{code}) {groups.replace(' ', '-')}",
        f"(+{code}){nsn}",
        f"+({code}) {groups}",
        f"+{code} ({nsn[:3]}) {nsn[3:]}",
        international.replace(" ", "."),
        international.replace(" ", "/"),
        international.replace(" ", "-"),
        international.replace(" ", "\u00a0"),
        international.replace(" ", "\u2009"),
        international.replace(" ", "\u202f"),
        national.replace(" ", "-"),
        national.replace(" ", "/"),
        national.replace(" ", "."),
        "  " + international + "  ",
        nsn,
        "0" + nsn,
        f"+{code}0{nsn}",
        international + " ext. 12",
        international + " x123",
        e164 + ";ext=7",
        e164[:-3],
        e164 + "123",
        e164[:-1] + "a",
        "tel:" + e164,
        "call me at " + international,
    ]
    rng.shuffle(out)
    return out


def phone_cases(rng):
    cases = []
    for region in REGIONS:
        numbers = []
        for kind in TYPES:
            example = phonenumbers.example_number_for_type(region, kind)
            if example is not None:
                numbers.append(example)
                # A neighbour of the example: another valid or invalid number of the range.
                for delta in (1, 7, 13):
                    neighbour = phonenumbers.PhoneNumber(
                        country_code=example.country_code, national_number=example.national_number + delta
                    )
                    numbers.append(neighbour)
        invalid = phonenumbers.invalid_example_number(region)
        if invalid is not None:
            numbers.append(invalid)
        for number in numbers:
            for raw in spellings(number, rng):
                for default in (region, None, rng.choice(REGIONS)):
                    cases.append((raw, default))
    # A deterministic sample keeps the file small; every kind of spelling stays.
    cases = rng.sample(cases, DERIVED_SAMPLE)
    for raw in ["", "null", "N/A", "undefined", "unknown", "-", "+420 000 000 000", "777777777", "+1 (111) 111-1111",
                "12", "+4", "++420777123456", "+420 777 123 456 789 012 345", "phone", "1-800-FLOWERS", "1-800-GOT-JUNK",
                "+420 777 ABC 456", "0800 123 4567", "+44 (0) 20 7946 0958", "(0) 20 7946 0958", "+49 (0)30 901820",
                "+380 (44) 123-45-67", "8 (044) 123-45-67", "+421 2/123 456 78", "+43 1 58058-0", "(+420) 797-743-386"]:
        for default in REGIONS + [None]:
            cases.append((raw, default))
    seen = set()
    unique = []
    for raw, region in cases:
        if (raw, region) not in seen:
            seen.add((raw, region))
            unique.append({"raw": raw, "region": region, "expected": expected_phone(raw, region)})
    return unique


def expected_email(raw):
    text = raw.strip()
    if text.lower() in JUNK_WORDS:
        return None
    try:
        valid = validate_email(text, check_deliverability=False)
    except EmailNotValidError:
        return None
    address = valid.local_part.lower() + "@" + valid.ascii_domain.lower()
    return None if address in JUNK_EMAILS else address


def email_cases(rng):
    locals_ = ["jana.novakova", "Jana.Novakova", "JANA", "jana+orders", "jana+", "j", "o'brien", "first_last",
               "user-name", "x.y.z", "123", "jana..novakova", ".jana", "jana.", "\"jana novakova\"", "\"a@b\"",
               "jana novakova", "jaña", "ЯНА", "用户", "jana\u200b", "jana\u202e", "ja(na)", "jana,x", "a" * 64, "a" * 65,
               "user%host", "{weird}", "tab\tbed", "jana\u00a0x"]
    domains = ["example.cz", "EXAMPLE.CZ", "exámple.cz", "bücher.de", "пример.рф", "例え.テスト", "xn--bcher-kva.de",
               "xn--invalid-.de", "münchen.de", "ΑΒΓ.gr", "mixedраypal.com", "exa_mple.cz", "-lead.cz", "trail-.cz",
               "localhost", "example", "sub.example.co.uk", "1.2.3.4", "[127.0.0.1]", "example..cz", "ex ample.cz",
               "a" * 63 + ".cz", "a" * 64 + ".cz", "ß.de", "faß.de", "ⓔxample.cz", "EXAMPLE.CZ.", "e\u0301xample.cz"]
    cases = set()
    for local in locals_:
        for domain in domains:
            cases.add(f"{local}@{domain}")
    for raw in ["", "null", "n/a", "test@test.com", "TEST@TEST.COM", "noreply@noreply.com", "a@a.com", "@example.cz",
                "jana@", "jana", "jana@@example.cz", "jana@example@cz", "  jana@example.cz  ", "jana@example.cz\n",
                "mailto:jana@example.cz", "<jana@example.cz>", "Jana <jana@example.cz>", "jana@example.cz,petr@example.cz"]:
        cases.add(raw)
    ordered = sorted(cases)
    rng.shuffle(ordered)
    return [{"raw": raw, "expected": expected_email(raw)} for raw in ordered]


def write(name, cases):
    with open(os.path.join(HERE, name), "w", encoding="utf-8") as out:
        for case in cases:
            out.write(json.dumps(case, ensure_ascii=False, sort_keys=True) + "\n")


def main():
    rng = random.Random(7)
    write("phones.jsonl", phone_cases(rng))
    write("emails.jsonl", email_cases(rng))


if __name__ == "__main__":
    assert phonenumbers.__version__ == "9.0.33", "the Rust phonenumber crate carries metadata 9.0.33"
    assert idna  # imported for its codec, which email-validator uses
    main()

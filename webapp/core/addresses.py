"""Strict e-mail address parsing and header-field safety. Pure functions: no Flask, no database.

Python 3.11.7's email.utils.parseaddr/getaddresses lack the fixes for CVE-2023-27043 and
CVE-2024-6923 (they accept `a@b.c)<x@y.z>` as some other address, and let line breaks through
into headers), so every address and header value the project writes passes through here first.
Only syntax is checked, never DNS: the server may be offline.
"""
from __future__ import annotations

import base64
import binascii
import codecs
import re
from email import policy as email_policy
from dataclasses import dataclass

# An attachment's type when its sender names none.
DEFAULT_CONTENT_TYPE = "application/octet-stream"


class AddressError(ValueError):
    """An address or header value refused; the message says why, in words for a person."""


# Line breaks and NUL end a header early (header injection). Other C0 controls, DEL and the
# Unicode line separators are refused with them: no header needs them and some tools split on them.
_FORBIDDEN_CHARS = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")
_NAMES = {"\r": "a carriage return (CR)", "\n": "a line feed (LF)", "\x00": "a NUL character"}

# An RFC 2047 encoded word: =?charset[*language]?Q|B?text?=
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([^?\s]+)\?([^?\s]*)\?=")

# RFC 5322 atext, the characters of an atom.
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_DOT_ATOM = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*\Z")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\Z")
# Characters with a meaning in address syntax: outside quotes they cannot be part of a name.
_SPECIALS = set('()<>[]:;@\\,"')


def _describe(char: str) -> str:
    return _NAMES.get(char, f"the control character U+{ord(char):04X}")


def _check_plain(value: str, what: str) -> None:
    match = _FORBIDDEN_CHARS.search(value)
    if match:
        raise AddressError(f"{what} contains {_describe(match.group())}.")


def decode_encoded_word(charset: str, encoding: str, text: str) -> str:
    """The text of one RFC 2047 encoded word; AddressError when it cannot be decoded."""
    charset = charset.split("*", 1)[0]  # RFC 2231 adds a language after "*"
    encoding = encoding.upper()
    try:
        if encoding == "Q":
            data = re.sub(rb"=([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]),
                          text.replace("_", " ").encode("ascii"))
        elif encoding == "B":
            padded = text + "=" * (-len(text) % 4)
            data = base64.b64decode(padded.encode("ascii"), validate=True)
        else:
            raise AddressError(f"an encoded word uses the unknown encoding {encoding!r}.")
        codecs.lookup(charset)
    except (binascii.Error, UnicodeEncodeError, ValueError) as error:
        if isinstance(error, AddressError):
            raise
        raise AddressError(f"an encoded word cannot be decoded ({error}).") from None
    except LookupError:
        raise AddressError(f"an encoded word names the unknown character set {charset!r}.") from None
    # The bytes themselves first: a charset such as UTF-16 could hide a line break from the text.
    for byte, char in ((b"\r", "\r"), (b"\n", "\n"), (b"\x00", "\x00")):
        if byte in data:
            raise AddressError(f"an encoded word decodes to {_describe(char)}.")
    return data.decode(charset, errors="replace")


def decode_header_text(value: str) -> str:
    """The value with its encoded words decoded (whitespace between adjacent words dropped)."""
    parts: list[str] = []
    position = 0
    previous_was_word = False
    for match in _ENCODED_WORD.finditer(value):
        between = value[position:match.start()]
        if not (previous_was_word and between.strip() == ""):
            parts.append(between)
        parts.append(decode_encoded_word(*match.groups()))
        position = match.end()
        previous_was_word = True
    parts.append(value[position:])
    return "".join(parts)


def check_header_value(value: str, what: str = "The value") -> str:
    """Returns `value` unchanged if it is safe in a header field or a MIME parameter (a file
    name, a content type, a charset, a boundary), else raises AddressError. The one check that
    everything we write into a header passes.

    Refused: CR, LF, NUL (and other control characters) anywhere, also once decoded by any of
    the readers that decode encoded words: ours (RFC 2047, `=?UTF-8?Q?=0A?=`), the email
    package's as it reads a header and a MIME parameter (which also take an empty charset,
    `=??q?=0A?=`, and spaces in the encoded text), and a lenient one for the forms no standard
    allows (an encoded word without its closing `?=`).
    """
    if not isinstance(value, str):
        raise AddressError(f"{what} must be text.")
    _check_plain(value, what)
    try:
        decoded = decode_header_text(value)
    except AddressError as error:
        raise AddressError(f"{what}: {error}") from None
    _check_plain(decoded, what + " (decoded)")
    if "=?" in value:
        for reading in _library_readings(value):
            _check_plain(reading, what + " (decoded)")
        _check_lenient_words(value, what)
    return value


def _library_readings(value: str) -> list[str]:
    """What Python's email package decodes `value` to, as an unstructured header and as a
    quoted MIME parameter: the readings a receiver built on it would make."""
    readings = []
    try:
        readings.append(str(email_policy.default.header_factory("Subject", value)))
    except Exception:  # a value the parser cannot read is refused by the other checks or stays inert
        pass
    quoted = value.replace("\\", "\\\\").replace('"', '\\"')
    try:
        readings.append(str(email_policy.default.header_factory(
            "Content-Disposition", f'attachment; filename="{quoted}"').params.get("filename", "")))
    except Exception:
        pass
    return readings


# Anything shaped like an encoded word, however malformed: charset (maybe empty), Q or B, text.
_LOOSE_WORD = re.compile(r"=\?([^?]*)\?([QqBb])\?(.*?)(?:\?=|$)", re.DOTALL)


def _check_lenient_words(value: str, what: str) -> None:
    for _, encoding, text in _LOOSE_WORD.findall(value):
        if encoding in "Qq":
            data = re.sub(rb"=([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]),
                          text.replace("_", " ").encode("ascii", "replace"))
        else:
            compact = re.sub(r"[^A-Za-z0-9+/]", "", text)
            try:
                data = base64.b64decode(compact + "=" * (-len(compact) % 4))
            except (binascii.Error, ValueError):
                continue
        for byte, char in ((b"\r", "\r"), (b"\n", "\n"), (b"\x00", "\x00")):
            if byte in data:
                raise AddressError(f"{what}: an encoded word decodes to {_describe(char)}.")


@dataclass(frozen=True)
class Address:
    """One mailbox: the normalised address (domain in lower case) and the display name."""

    address: str
    display_name: str = ""

    def formatted(self) -> str:
        """`Name <address>` for a header, the name quoted where it needs it; else the address.
        parse_address reads it back as this Address."""
        if not self.display_name:
            return self.address
        name = self.display_name
        if "=?" in name:
            # One encoded word of the text: parse_address decodes encoded words, quoted or not, so
            # this name read back is the text itself, never what the text would decode to.
            return f"=?utf-8?b?{base64.b64encode(name.encode('utf-8')).decode('ascii')}?= <{self.address}>"
        if not re.fullmatch(rf"[ {_ATEXT}]+", name) or name != name.strip():
            name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{name} <{self.address}>"


def parse_addr_spec(value: str) -> str:
    """The normalised `local@domain`, or AddressError. Dot-atom local parts only; no literals."""
    if value.count("@") != 1:
        raise AddressError(f"{value!r} is not an e-mail address (it needs exactly one @).")
    local, domain = value.split("@")
    if not local:
        raise AddressError(f"{value!r} has nothing before the @.")
    if len(local) > 64:
        raise AddressError(f"{value!r} has a part before the @ longer than 64 characters.")
    if not _DOT_ATOM.match(local):
        raise AddressError(f"{value!r} has characters before the @ that an address cannot have.")
    if not domain:
        raise AddressError(f"{value!r} has no domain after the @.")
    try:
        ascii_domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError:
        raise AddressError(f"{value!r} has a domain that is not a valid name.") from None
    labels = ascii_domain.split(".")
    if len(ascii_domain) > 253 or not all(_LABEL.match(label) for label in labels):
        raise AddressError(f"{value!r} has a domain that is not a valid name.")
    address = f"{local}@{ascii_domain.lower()}"
    if len(address) > 254:
        raise AddressError(f"{value!r} is longer than 254 characters.")
    return address


def _parse_display_name(raw: str, original: str) -> str:
    raw = raw.strip()
    if not raw:
        return ""
    if raw.startswith('"'):
        if len(raw) < 2 or not raw.endswith('"'):
            raise AddressError(f"{original!r} has an unclosed quoted name.")
        inner = raw[1:-1]
        name, escaped = [], False
        for char in inner:
            if escaped:
                name.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                raise AddressError(f"{original!r} has a quote inside the quoted name.")
            else:
                name.append(char)
        if escaped:
            raise AddressError(f"{original!r} ends its quoted name with a backslash.")
        name_text = "".join(name)
    else:
        bad = sorted(set(raw) & _SPECIALS)
        if bad:
            raise AddressError(
                f"{original!r} has {' '.join(bad)} in its name: put the name in double quotes."
            )
        name_text = " ".join(raw.split())
    decoded = decode_header_text(name_text)
    _check_plain(decoded, "The name")
    return decoded.strip()


def parse_address(value: str) -> Address:
    """One address, parsed strictly: `addr@example.org`, `Name <addr@example.org>`,
    `"Name, Quoted" <addr@example.org>` or `<addr@example.org>`.

    Refused with AddressError: comments, groups, route addresses and other obsolete syntax,
    quoted local parts, domain literals, several addresses, anything after the `>`, and CR, LF
    or NUL anywhere (also inside encoded words).
    """
    if not isinstance(value, str):
        raise AddressError("An address must be text.")
    _check_plain(value, "The address")
    text = value.strip()
    if not text:
        raise AddressError("The address is empty.")
    if "<" not in text and ">" not in text:
        if any(char.isspace() for char in text):
            raise AddressError(f"{value!r} is not an e-mail address (it has spaces).")
        return Address(parse_addr_spec(text))
    # Name <addr-spec>: the angle brackets must be the last thing, once each, outside quotes.
    outside, closed = _outside_quotes(text)
    opens = [index for index, char in outside if char == "<"]
    if len(opens) > 1:
        raise AddressError(f"{value!r} has more than one <.")
    if not closed:
        raise AddressError(f"{value!r} has an unclosed quoted name.")
    open_at = opens[0] if opens else -1
    if open_at == -1 or not text.endswith(">") or text.count(">", open_at) != 1:
        raise AddressError(f"{value!r} is not one address in the form Name <address>.")
    spec = text[open_at + 1:-1]
    if spec.startswith("@") or ":" in spec:
        raise AddressError(f"{value!r} uses a source route, which is not accepted.")
    if any(char.isspace() for char in spec):
        raise AddressError(f"{value!r} has spaces inside the <>.")
    return Address(parse_addr_spec(spec), _parse_display_name(text[:open_at], value))


def split_address_list(value: str) -> list[str]:
    """A comma- or line-separated list of addresses, split where no quote or <> is open."""
    cuts, depth = [], 0
    for index, char in _outside_quotes(value)[0]:
        if char == "<":
            depth += 1
        elif char == ">":
            depth = max(0, depth - 1)
        elif depth == 0 and char in ",;\n\r":
            cuts.append(index)
    parts = [value[start + 1:end] for start, end in zip([-1, *cuts], [*cuts, len(value)])]
    return [part.strip() for part in parts if part.strip()]


def _outside_quotes(text: str) -> tuple[list[tuple[int, str]], bool]:
    """The characters of `text` that stand outside double quotes, each with its index, and whether
    every quote was closed. Inside quotes a backslash escapes the next character."""
    outside, in_quotes, escaped = [], False, False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif in_quotes and char == "\\":
            escaped = True
        elif char == '"':
            in_quotes = not in_quotes
        elif not in_quotes:
            outside.append((index, char))
    return outside, not in_quotes


def check_content_type(value: str) -> str:
    """A bare `type/subtype`, lower-cased; parameters and anything else are refused."""
    if not isinstance(value, str) or not _CONTENT_TYPE.match(value.strip()):
        raise AddressError(f"{value!r} is not a content type of the form type/subtype.")
    return value.strip().lower()

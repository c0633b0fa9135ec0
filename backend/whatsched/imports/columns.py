"""Which column is the phone, the name (or first + last name) and the email: headers in English or
Spanish, in any case and with or without accents, or an explicit mapping {"phone": "<header>", ...}."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

from whatsched.imports.refusal import ImportRefused

ROLES = ("name", "phone", "email")

# Folded header → rank (lower wins when a file has several phone columns: the WhatsApp one first).
_PHONE_EXACT = {
    "whatsapp": 0,
    "numero whatsapp": 0,
    "numero de whatsapp": 0,
    "whatsapp number": 0,
    "celular": 1,
    "numero celular": 1,
    "numero de celular": 1,
    "telefono celular": 1,
    "movil": 1,
    "telefono movil": 1,
    "numero movil": 1,
    "mobile": 1,
    "mobile phone": 1,
    "mobile number": 1,
    "cell": 1,
    "cellphone": 1,
    "cell phone": 1,
    "telefono": 2,
    "numero de telefono": 2,
    "numero telefono": 2,
    "phone": 2,
    "phone number": 2,
    "phonenumber": 2,
    "telephone": 2,
    "fono": 2,
    "tel": 3,
    "tlf": 3,
    "telf": 3,
    "numero": 4,
    "number": 4,
}
# A word that makes any header a phone column ("Teléfono (trabajo)", "Phone 1").
_PHONE_WORDS = {"whatsapp": 0, "celular": 1, "movil": 1, "mobile": 1, "cell": 1, "cellphone": 1}
_PHONE_WORDS |= {"telefono": 2, "phone": 2, "telephone": 2, "fono": 2}
_EMAIL_EXACT = {"email", "e mail", "mail", "correo", "correo electronico", "email address", "e mail address"}
_EMAIL_WORDS = {"email", "correo", "mail"}
_NAME_EXACT = {
    "name",
    "nombre",
    "full name",
    "fullname",
    "nombre completo",
    "nombre y apellido",
    "nombre y apellidos",
    "contact",
    "contacto",
    "contact name",
    "nombre contacto",
    "nombre del contacto",
    "display name",
    "cliente",
    "client",
    "customer",
}
_FIRST_EXACT = {"first name", "firstname", "first", "given name", "nombres", "primer nombre", "nombre de pila"}
_LAST_EXACT = {"last name", "lastname", "last", "surname", "family name", "apellido", "apellidos"}
_LAST_WORDS = {"apellido", "apellidos", "surname", "lastname"}


def fold(text: str) -> str:
    """'  Teléfono-Móvil ' → 'telefono movil': no accents, no case, words split on anything else."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()
    return " ".join(re.sub(r"[^0-9a-z]+", " ", plain).split())


@dataclass(frozen=True)
class ColumnPlan:
    """Column positions in the table; `name` holds one column, or first name + last name column(s)."""

    phone: int
    name: tuple[int, ...]
    email: int | None
    headers: tuple[str, ...]

    def label(self, index: int) -> str:
        return self.headers[index] or f"column {index + 1}"

    @property
    def indices(self) -> list[int]:
        """The columns the import reads."""
        return sorted({self.phone, *self.name, *([self.email] if self.email is not None else [])})


def _named(headers: list[str]) -> str:
    return ", ".join(repr(h) for h in headers if h) or "none"


def _no_phone(headers: list[str]) -> ImportRefused:
    found = _named(headers)
    detail = f"No phone column was found; the columns are: {found}. Name it phone, teléfono, celular or whatsapp, or send a mapping."
    return ImportRefused(422, "no_phone_column", detail, [{"field": "file", "message": detail}])


def _find(headers: list[str], wanted: str, role: str) -> int:
    for i, header in enumerate(headers):
        if header == wanted:
            return i
    folded = fold(wanted)
    for i, header in enumerate(headers):
        if fold(header) == folded:
            return i
    detail = f"The mapping names {wanted!r} for {role}, but the file's columns are: {_named(headers)}."
    raise ImportRefused(422, "unknown_column", detail, [{"field": f"mapping.{role}", "message": detail}])


def plan_columns(headers: list[str], mapping: Mapping[str, str] | None = None) -> ColumnPlan:
    """Decide the columns; explicit mapping entries win, the rest are recognised by their header."""
    mapping = mapping or {}
    folded = [fold(h) for h in headers]
    taken: set[int] = set()

    phone = _find(headers, mapping["phone"], "phone") if "phone" in mapping else _detect_phone(folded)
    if phone is None:
        raise _no_phone(headers)
    taken.add(phone)

    if "email" in mapping:
        email: int | None = _find(headers, mapping["email"], "email")
    else:
        email = next((i for i, f in enumerate(folded) if i not in taken and f in _EMAIL_EXACT), None)
        if email is None:
            email = next((i for i, f in enumerate(folded) if i not in taken and _EMAIL_WORDS & set(f.split())), None)
    if email is not None:
        taken.add(email)

    if "name" in mapping:
        name: tuple[int, ...] = (_find(headers, mapping["name"], "name"),)
    else:
        name = _detect_name(folded, taken)
    return ColumnPlan(phone=phone, name=name, email=email, headers=tuple(headers))


def _detect_phone(folded: list[str]) -> int | None:
    best: tuple[int, int, int] | None = None  # (exactness, rank, position)
    for i, f in enumerate(folded):
        if f in _PHONE_EXACT:
            candidate = (0, _PHONE_EXACT[f], i)
        else:
            ranks = [_PHONE_WORDS[w] for w in f.split() if w in _PHONE_WORDS]
            if not ranks:
                continue
            candidate = (1, min(ranks), i)
        if best is None or candidate < best:
            best = candidate
    return None if best is None else best[2]


def _detect_name(folded: list[str], taken: set[int]) -> tuple[int, ...]:
    free = [i for i in range(len(folded)) if i not in taken]
    lasts = [i for i in free if folded[i] in _LAST_EXACT or (_LAST_WORDS & set(folded[i].split()))]
    first = next((i for i in free if folded[i] in _FIRST_EXACT and i not in lasts), None)
    whole = next((i for i in free if folded[i] in _NAME_EXACT and i not in lasts), None)
    if whole is None:
        whole = next(
            (i for i in free if i not in lasts and i != first and {"nombre", "name"} & set(folded[i].split())), None
        )
    if lasts:
        # "Nombre" next to "Apellido" is a first name; the last-name columns follow in file order.
        head = first if first is not None else whole
        return ((head,) if head is not None else ()) + tuple(lasts)
    if whole is not None:
        return (whole,)
    return (first,) if first is not None else ()

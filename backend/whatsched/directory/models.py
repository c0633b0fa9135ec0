"""Request bodies and the documented response shapes of the groups and contacts API."""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

import phonenumbers
from pydantic import BaseModel, EmailStr, Field, field_validator, model_validator

from whatsched.models import UtcDateTime

MAX_GROUPS_PER_CONTACT_WRITE = 100
MAX_MEMBERS_PER_ADD = 1000

GroupSort = Literal["name", "-name", "created_at", "-created_at", "contact_count", "-contact_count"]
ContactSort = Literal["name", "-name", "created_at", "-created_at", "phone", "-phone"]


def _refuse_nulls(data: Any, fields: tuple[str, ...]) -> Any:
    """A partial update may omit a field, but not send null for one that cannot be empty."""
    if isinstance(data, dict):
        for name in fields:
            if name in data and data[name] is None:
                raise ValueError(f"{name} cannot be null")
    return data


def _without_nul(value: str | None) -> str | None:
    # Postgres text cannot carry NUL, so it cannot reach the cleaning that removes every other
    # control character (triggers on contacts and groups); JSON can. Dropping it is transport.
    return None if value is None else value.replace("\x00", "")


# -----------------------------------------------------------------------------------------------
# Groups
# -----------------------------------------------------------------------------------------------


class GroupWrite(BaseModel):
    # Raw lengths are generous: Postgres cleans the text, then applies the limits (422 with the field).
    name: str = Field(max_length=2000, description="1 to 100 characters after trimming; unique per user (any case)")
    description: str | None = Field(default=None, max_length=5000, description="At most 1000 characters")

    @field_validator("name", "description")
    @classmethod
    def _nul(cls, value: str | None) -> str | None:
        return _without_nul(value)


class GroupCreate(GroupWrite):
    pass


class GroupUpdate(GroupWrite):
    """Partial: only the fields present in the body change (null description clears it)."""

    name: str = Field(default="", max_length=2000, description="1 to 100 characters after trimming")

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data: Any) -> Any:
        return _refuse_nulls(data, ("name",))


class Group(BaseModel):
    id: str
    name: str
    description: str
    contact_count: int = Field(description="Members of the group, active or not")
    created_at: UtcDateTime
    updated_at: UtcDateTime
    created_by: str


class GroupPage(BaseModel):
    items: list[Group]
    total: int
    page: int
    page_size: int


class MembersAdd(BaseModel):
    contact_ids: list[UUID] = Field(min_length=1, max_length=MAX_MEMBERS_PER_ADD)


class MembersAdded(BaseModel):
    added: int = Field(description="Contacts that joined the group with this request")
    already_members: int = Field(description="Contacts (distinct ids) that were members already")


# -----------------------------------------------------------------------------------------------
# Contacts
# -----------------------------------------------------------------------------------------------


class ContactWrite(BaseModel):
    name: str = Field(max_length=2000, description="1 to 200 characters after trimming, without links")
    phone: str = Field(
        max_length=100,
        description='Any way a person writes it ("+56 9 1234 5678", "9 1234 5678"); stored as E.164',
    )
    email: EmailStr | None = Field(default=None, description='Optional; "" means none')
    is_active: bool = True
    opted_out: bool = Field(default=False, description="The contact asked not to be messaged (never sent to)")
    group_ids: list[UUID] = Field(default_factory=list, max_length=MAX_GROUPS_PER_CONTACT_WRITE)
    default_country: str | None = Field(
        default=None,
        description="ISO 3166 region for a national number; defaults to your profile's default_country",
    )

    @field_validator("name")
    @classmethod
    def _nul(cls, value: str) -> str:
        return value.replace("\x00", "")

    @field_validator("email", mode="before")
    @classmethod
    def _empty_email(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            return value or None
        return value

    @field_validator("default_country")
    @classmethod
    def _country(cls, value: str | None) -> str | None:
        if value is None:
            return None
        region = value.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError("must be a two-letter country code such as CL, AR or US")
        return region


class ContactCreate(ContactWrite):
    pass


class ContactUpdate(ContactWrite):
    """Partial: only the fields present in the body change. group_ids replaces the contact's groups;
    email null clears it; opted_out true records when, false clears it."""

    name: str = Field(default="", max_length=2000, description="1 to 200 characters after trimming")
    phone: str = Field(default="", max_length=100, description="Stored as E.164")

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data: Any) -> Any:
        return _refuse_nulls(data, ("name", "phone", "is_active", "opted_out", "group_ids"))


class Contact(BaseModel):
    id: str
    name: str
    phone: str = Field(description="E.164, e.g. +56912345678")
    email: str | None
    is_active: bool
    groups: list[str] = Field(
        description="Ids of the contact's groups, in the order it joined them (by id within one request)"
    )
    created_at: UtcDateTime
    updated_at: UtcDateTime
    opted_out_at: UtcDateTime | None = Field(description="When the contact asked not to be messaged; null if not")
    opted_out_keyword: str | None = Field(
        description="The reply that opted the contact out (e.g. BAJA); null when opted out by hand or not at all"
    )


class ContactPage(BaseModel):
    items: list[Contact]
    total: int
    page: int
    page_size: int

"""Contacts import from CSV and spreadsheets. Submodules are imported where used: the phone-parsing
workers import `whatsched.imports.normalize` and must not pull in pandas or the API with it."""

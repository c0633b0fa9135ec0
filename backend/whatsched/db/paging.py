"""A list page's LIMIT and OFFSET: the one place the offset of a 1-based page is computed.

Query modules write them into the statement as literals. As parameters, Postgres plans
`limit $1 offset $2` for an unknown 10 % of the table: the generic plan then costs more than a
custom one, so every execution is planned again (about as long as running a page query). With the
validated integers in the text, the generic plan is priced right and each connection plans a page
shape once."""

from __future__ import annotations


def limit_offset(page: int, page_size: int) -> tuple[int, int]:
    """LIMIT and OFFSET of 1-based `page` (validated integers, safe to write into SQL text)."""
    size = int(page_size)
    return size, (int(page) - 1) * size

"""A list page's LIMIT and OFFSET: the one place the offset of a 1-based page is computed; and
`page_json`, the one shape of a page answered as JSON built by Postgres.

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


def page_json(
    table: str, alias: str, condition: str, order: str, item_json: str, page: int, page_size: int, joins: str = ""
) -> str:
    """One statement answering a page as the response's JSON text, {items, total, page, page_size}:
    the rows of `table` (as `alias`) matching `condition`, in `order`, each as `item_json` (which
    may read the relations `joins` adds to the page's rows), and how many match in all."""
    limit, offset = limit_offset(page, page_size)
    return f"""
with page as (
  select {alias}.* from {table} {alias} where {condition} order by {order} limit {limit} offset {offset}
)
select json_build_object(
  'items', coalesce((select json_agg({item_json} order by {order}) from page {alias} {joins}), '[]'::json),
  'total', (select count(*) from {table} {alias} where {condition}),
  'page', {int(page)}::integer,
  'page_size', {limit}::integer
)::text"""

"""`appliance jobs search QUERY [--json]`: the full-text search, from the shell."""

from __future__ import annotations

import json
import sys

import click

from appliance.errors import InvalidRequest
from cli.jobs import _service, jobs

# ANSI bold for the matches when stdout is a terminal; plain brackets when piped.
_TTY_MARK = ("\x1b[1m", "\x1b[0m")
_PLAIN_MARK = ("[", "]")


@jobs.command("search")
@click.argument("query")
@click.option("--owner", default=None, help="Only this user's jobs.")
@click.option("--limit", type=click.IntRange(1, 200), default=20, show_default=True)
@click.option("--cursor", default=None, help="Continue after a previous page.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per hit on stdout.")
@click.pass_context
def jobs_search(
    ctx: click.Context, query: str, owner: str | None, limit: int, cursor: str | None, as_json: bool
) -> None:
    """Succeeded jobs whose results match QUERY, best first.

    QUERY: words that must all occur (case and accents ignored), prefix* and "exact phrase",
    e.g. appliance jobs search '"blue house" invoi*'.
    """
    try:
        page = _service(ctx).search(query, owner=owner, limit=limit, cursor=cursor)
    except InvalidRequest as exc:
        raise click.UsageError(str(exc)) from exc
    start, end = _TTY_MARK if sys.stdout.isatty() else _PLAIN_MARK
    for hit in page.items:
        if as_json:
            click.echo(json.dumps(hit.to_dict(), ensure_ascii=False))
            continue
        text, out, last = hit.snippet.text, [], 0
        for a, b in hit.snippet.highlights:
            out += [text[last:a], start, text[a:b], end]
            last = b
        out.append(text[last:])
        click.echo(f"{hit.job.id}  {hit.score:8.3f}  {hit.job.filename}\n    {''.join(out)}")
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)

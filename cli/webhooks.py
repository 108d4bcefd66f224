"""`appliance webhooks create|list|disable|enable|deliveries|redeliver|secret`."""

from __future__ import annotations

import json
from typing import Any

import click

from appliance.errors import ApplianceError
from appliance.vocab import DELIVERY_STATES, WEBHOOK_EVENTS
from cli.group import cli, get_settings


@cli.group()
def webhooks() -> None:
    """Signed callbacks when jobs end and batches finish (deliveries go out from the workers)."""


def _service(ctx: click.Context) -> Any:
    from appliance.webhooks import WebhookService

    return WebhookService.from_settings(get_settings(ctx))


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except ApplianceError as exc:  # refused target, unknown id: one line, non-zero exit
        raise click.ClickException(str(exc)) from None


@webhooks.command("create")
@click.argument("url")
@click.option(
    "--event",
    "events",
    multiple=True,
    type=click.Choice(WEBHOOK_EVENTS),
    help="Repeat for several (default: every event).",
)
@click.option("--description", default="")
@click.pass_context
def webhooks_create(
    ctx: click.Context, url: str, events: tuple[str, ...], description: str
) -> None:
    """Subscribe URL (its host must be in `[webhooks] allow`); the secret is printed once."""
    info, secret = _call(_service(ctx).create, url, list(events), description=description)
    click.echo(secret)
    click.echo(
        f"webhook {info.id} -> {info.url} created; the secret will not be shown again", err=True
    )


@webhooks.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def webhooks_list(ctx: click.Context, as_json: bool) -> None:
    """Subscriptions (never their secrets)."""
    for info in _service(ctx).list():
        if as_json:
            click.echo(json.dumps(info.to_dict()))
            continue
        state = "enabled" if info.enabled else f"disabled: {info.disabled_reason}"
        where = f" folder {info.folder}" if info.folder else ""
        click.echo(f"{info.id}  {info.url}  [{', '.join(info.events)}]{where}  ({state})")


@webhooks.command("disable")
@click.argument("sub_id")
@click.option("--reason", default=None)
@click.pass_context
def webhooks_disable(ctx: click.Context, sub_id: str, reason: str | None) -> None:
    """Stop deliveries to a subscription."""
    _call(_service(ctx).disable, sub_id, reason)
    click.echo(f"disabled {sub_id}")


@webhooks.command("enable")
@click.argument("sub_id")
@click.pass_context
def webhooks_enable(ctx: click.Context, sub_id: str) -> None:
    """Deliver again (its target is checked against the allow-list first)."""
    _call(_service(ctx).enable, sub_id)
    click.echo(f"enabled {sub_id}")


@webhooks.command("deliveries")
@click.argument("sub_id", required=False)
@click.option("--state", type=click.Choice(DELIVERY_STATES), default=None)
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@click.option("--delivery", "delivery_id", default=None, help="One delivery's attempt log.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def webhooks_deliveries(
    ctx: click.Context,
    sub_id: str | None,
    state: str | None,
    limit: int,
    delivery_id: str | None,
    as_json: bool,
) -> None:
    """Newest deliveries (of SUB_ID), or with --delivery every attempt of one."""
    service = _service(ctx)
    if delivery_id:
        rows = [_call(service.delivery, delivery_id)]
    else:
        rows = _call(service.deliveries, sub_id, state, limit)
    for d in rows:
        if as_json:
            click.echo(json.dumps(d.to_dict()))
            continue
        click.echo(f"{d.id}  {d.event}  {d.subject}  {d.state}  attempts={d.attempts}")
        for a in d.log:
            outcome = f"HTTP {a.status}" if a.status is not None else "no answer"
            why = f"  {a.error}" if a.error and not a.ok else ""
            click.echo(
                f"    #{a.attempt} {a.at.isoformat(timespec='seconds')} {outcome} {a.latency_ms} ms{why}"
            )


@webhooks.command("redeliver")
@click.argument("delivery_id")
@click.pass_context
def webhooks_redeliver(ctx: click.Context, delivery_id: str) -> None:
    """Send a delivery again now (same webhook-id)."""
    _call(_service(ctx).redeliver, delivery_id)
    click.echo(f"queued {delivery_id} for redelivery")


@webhooks.command("secret")
def webhooks_secret() -> None:
    """Print a fresh whsec_ secret, for a `[[folders.webhooks]]` entry of the settings file."""
    from appliance.webhooks import generate_secret

    click.echo(generate_secret())

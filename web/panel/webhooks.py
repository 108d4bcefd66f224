"""The panel's webhooks page (admins only): subscriptions, the delivery log with every
attempt, and the forms that create, disable, enable and redeliver. The views call
`appliance.webhooks.WebhookService`; deliveries themselves go out from the workers."""

from __future__ import annotations

from flask import abort, current_app, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from appliance.errors import ApplianceError, WebhookNotFound
from appliance.vocab import WEBHOOK_EVENTS
from appliance.webhooks import WebhookService
from web.panel import bp
from web.panel.auth import current_user


def _service() -> WebhookService:
    if not current_user().is_admin:
        abort(403, "Webhooks are managed by admins.")
    return current_app.extensions["appliance"].webhooks


@bp.route("/webhooks")
def webhooks() -> str:
    service = _service()
    subs = service.list()
    chosen = request.args.get("sub") or (subs[0].id if subs else None)
    deliveries = service.deliveries(chosen, limit=30) if chosen else []
    return render_template(
        "panel/webhooks.html",
        subs=subs,
        chosen=chosen,
        deliveries=deliveries,
        events=WEBHOOK_EVENTS,
        allow=service.settings.webhooks.allow,
    )


@bp.route("/webhooks", methods=["POST"])
def webhooks_create() -> str | tuple[str, int]:
    service = _service()
    try:
        info, secret = service.create(
            request.form.get("url", ""),
            request.form.getlist("events"),
            description=request.form.get("description", ""),
            created_by=current_user().name,
        )
    except ApplianceError as exc:  # refused target: say why, keep what was typed
        page = render_template(
            "panel/webhooks.html",
            subs=service.list(),
            chosen=None,
            deliveries=[],
            events=WEBHOOK_EVENTS,
            allow=service.settings.webhooks.allow,
            error=str(exc),
            form=request.form,
        )
        return page, 422
    # The secret is on this page only: it is not shown again.
    return render_template("panel/webhook_created.html", info=info, secret=secret)


@bp.route("/webhooks/<sub_id>/<action>", methods=["POST"])
def webhooks_toggle(sub_id: str, action: str) -> Response:
    service = _service()
    try:
        if action == "disable":
            service.disable(sub_id, request.form.get("reason") or None)
        elif action == "enable":
            service.enable(sub_id)
        else:
            abort(404)
    except ApplianceError as exc:
        abort(404 if isinstance(exc, WebhookNotFound) else 422, str(exc))
    return redirect(url_for("panel.webhooks", sub=sub_id))


@bp.route("/webhooks/deliveries/<delivery_id>/redeliver", methods=["POST"])
def webhooks_redeliver(delivery_id: str) -> Response:
    service = _service()
    try:
        delivery = service.redeliver(delivery_id)
    except ApplianceError as exc:
        abort(404, str(exc))
    return redirect(url_for("panel.webhooks", sub=delivery.subscription_id))

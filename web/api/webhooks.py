"""/api/v1/webhooks: subscriptions, their delivery log and manual redelivery (admin only).

The views parse and call `appliance.webhooks.WebhookService`; nothing here sends a request:
deliveries go out from the workers' `webhooks` queue.
"""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import g
from flask.views import MethodView

from appliance.vocab import DELIVERY_STATES, WEBHOOK_EVENTS
from web.api import Blueprint
from web.auth import scope
from web.services import services

blp = Blueprint("webhooks", __name__, url_prefix="/api/v1/webhooks", description="Webhooks (admin)")


class CreateSchema(ma.Schema):
    url = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=2048))
    events = ma.fields.List(
        ma.fields.String(validate=ma.validate.OneOf(WEBHOOK_EVENTS)),
        load_default=None,
        metadata={"description": "default: every event"},
    )
    description = ma.fields.String(load_default="", validate=ma.validate.Length(max=200))


class SubscriptionSchema(ma.Schema):
    id = ma.fields.String()
    url = ma.fields.String()
    events = ma.fields.List(ma.fields.String(metadata={"enum": list(WEBHOOK_EVENTS)}))
    description = ma.fields.String()
    folder = ma.fields.String(allow_none=True, metadata={"description": "drop folder only"})
    origin = ma.fields.String(metadata={"description": "api, or settings (per drop folder)"})
    enabled = ma.fields.Boolean()
    disabled_reason = ma.fields.String(allow_none=True)
    disabled_at = ma.fields.String(allow_none=True)
    failures = ma.fields.Integer(metadata={"description": "failed attempts since a success"})
    created_at = ma.fields.String()
    created_by = ma.fields.String(allow_none=True)


class CreatedSchema(SubscriptionSchema):
    secret = ma.fields.String(metadata={"description": "whsec_...: shown this once only"})


class DisableSchema(ma.Schema):
    reason = ma.fields.String(load_default=None, validate=ma.validate.Length(max=500))


class AttemptSchema(ma.Schema):
    attempt = ma.fields.Integer()
    at = ma.fields.String()
    ok = ma.fields.Boolean()
    status = ma.fields.Integer(allow_none=True)
    latency_ms = ma.fields.Integer(allow_none=True)
    address = ma.fields.String(allow_none=True)
    response_excerpt = ma.fields.String(allow_none=True)
    error = ma.fields.String(allow_none=True)


class DeliverySchema(ma.Schema):
    id = ma.fields.String(metadata={"description": "the webhook-id header"})
    subscription_id = ma.fields.String()
    event = ma.fields.String(metadata={"enum": list(WEBHOOK_EVENTS)})
    subject = ma.fields.String(allow_none=True, metadata={"description": "job or batch id"})
    state = ma.fields.String(metadata={"enum": list(DELIVERY_STATES)})
    attempts = ma.fields.Integer()
    created_at = ma.fields.String()
    next_attempt_at = ma.fields.String(allow_none=True)
    delivered_at = ma.fields.String(allow_none=True)
    last_status = ma.fields.Integer(allow_none=True)
    last_error = ma.fields.String(allow_none=True)
    payload = ma.fields.Dict()
    log = ma.fields.List(ma.fields.Nested(AttemptSchema))


class DeliveriesQuery(ma.Schema):
    state = ma.fields.String(load_default=None, validate=ma.validate.OneOf(DELIVERY_STATES))
    limit = ma.fields.Integer(load_default=50, validate=ma.validate.Range(1, 500))


@blp.route("")
class Subscriptions(MethodView):
    @scope("admin")
    @blp.response(200, SubscriptionSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """Every subscription (never its secret)."""
        return [s.to_dict() for s in services().webhooks.list()]

    @scope("admin")
    @blp.arguments(CreateSchema)
    @blp.response(201, CreatedSchema)
    def post(self, args: dict[str, Any]) -> dict[str, Any]:
        """Subscribe a URL; 422 when the allow-list refuses its host. The secret is in this
        answer only."""
        info, secret = services().webhooks.create(
            args["url"],
            args["events"],
            description=args["description"],
            created_by=g.principal.name,
        )
        return {**info.to_dict(), "secret": secret}


@blp.route("/<sub_id>")
class Subscription(MethodView):
    @scope("admin")
    @blp.response(200, SubscriptionSchema)
    def get(self, sub_id: str) -> dict[str, Any]:
        return services().webhooks.get(sub_id).to_dict()


@blp.route("/<sub_id>/disable")
class Disable(MethodView):
    @scope("admin")
    @blp.arguments(DisableSchema)
    @blp.response(200, SubscriptionSchema)
    def post(self, args: dict[str, Any], sub_id: str) -> dict[str, Any]:
        """Stop deliveries: no new ones are made, pending ones wait."""
        return services().webhooks.disable(sub_id, args["reason"]).to_dict()


@blp.route("/<sub_id>/enable")
class Enable(MethodView):
    @scope("admin")
    @blp.response(200, SubscriptionSchema)
    def post(self, sub_id: str) -> dict[str, Any]:
        """Deliver again (the target is checked against the allow-list first)."""
        return services().webhooks.enable(sub_id).to_dict()


@blp.route("/<sub_id>/deliveries")
class Deliveries(MethodView):
    @scope("admin")
    @blp.arguments(DeliveriesQuery, location="query")
    @blp.response(200, DeliverySchema(many=True))
    def get(self, args: dict[str, Any], sub_id: str) -> list[dict[str, Any]]:
        """The newest deliveries of a subscription (the attempt log: GET the delivery)."""
        rows = services().webhooks.deliveries(sub_id, args["state"], args["limit"])
        return [d.to_dict() for d in rows]


@blp.route("/deliveries/<delivery_id>")
class Delivery(MethodView):
    @scope("admin")
    @blp.response(200, DeliverySchema)
    def get(self, delivery_id: str) -> dict[str, Any]:
        """One delivery with every attempt: status, latency, response excerpt, error."""
        return services().webhooks.delivery(delivery_id).to_dict()


@blp.route("/deliveries/<delivery_id>/redeliver")
class Redeliver(MethodView):
    @scope("admin")
    @blp.response(202, DeliverySchema)
    def post(self, delivery_id: str) -> dict[str, Any]:
        """Send it again now, with the same webhook-id."""
        return services().webhooks.redeliver(delivery_id).to_dict()

"""Table `users`: the browser panel's local accounts (see `appliance.users`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, String
from sqlalchemy.orm import Mapped, mapped_column

from appliance.store.base import Base, UTCDateTime, utcnow


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Also the `owner` of the jobs this user submits from the panel.
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # werkzeug's "scrypt:N:r:p$salt$hash" (the algorithm travels with the hash).
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

"""Local panel users: a name, a scrypt password hash and an admin flag.

The box is air-gapped and has a handful of users (a ward, a warehouse office), so there is no
directory service: `appliance users create NAME [--admin]` on the box is the whole user admin.
Passwords are hashed with werkzeug's scrypt (memory-hard, salted). `UserInfo.stamp` changes with
the password, so a panel session made before a password change (or a delete) stops working.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.security import check_password_hash, generate_password_hash

from appliance.errors import InvalidRequest
from appliance.settings import Settings
from appliance.store.accounts import User

# Names end up in job owners, URLs and logs: keep them boring.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # scrypt of a megabyte "password" is a cheap denial of service otherwise
# Checked against when the name is unknown, so a wrong name costs as long as a wrong password
# (no user enumeration by timing).
_DUMMY_HASH = generate_password_hash("not-a-real-password-0123456789")


@dataclass(frozen=True)
class UserInfo:
    id: int
    name: str
    is_admin: bool
    created_at: datetime
    # A short digest of the password hash: sessions remember it and die when it changes.
    stamp: str

    @classmethod
    def from_row(cls, row: User) -> UserInfo:
        stamp = hashlib.sha256(row.password_hash.encode()).hexdigest()[:16]
        return cls(row.id, row.name, row.is_admin, row.created_at, stamp)


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise InvalidRequest(
            "user name must be 1-64 characters: letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit)"
        )
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise InvalidRequest(f"password must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise InvalidRequest(f"password must be at most {MAX_PASSWORD} characters")
    return password


class UserStore:
    """Users in the job store's database (table `users`)."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    @classmethod
    def from_settings(cls, settings: Settings) -> UserStore:
        from appliance.store import init_db, session_factory

        # init_db migrates to head first, so a fresh box gets its `users` table here.
        return cls(session_factory(init_db(settings)))

    def create(self, name: str, password: str, *, admin: bool = False) -> UserInfo:
        check_name(name)
        check_password(password)
        with self._sessions.begin() as session:
            if session.scalar(select(User.id).where(User.name == name)) is not None:
                raise InvalidRequest(f"user {name!r} already exists")
            row = User(
                name=name,
                password_hash=generate_password_hash(password),
                is_admin=admin,
                created_at=datetime.now(UTC),
            )
            session.add(row)
            session.flush()
            return UserInfo.from_row(row)

    def get(self, name: str) -> UserInfo | None:
        with self._sessions() as session:
            row = session.scalar(select(User).where(User.name == name))
            return UserInfo.from_row(row) if row else None

    def list(self) -> list[UserInfo]:
        with self._sessions() as session:
            return [UserInfo.from_row(r) for r in session.scalars(select(User).order_by(User.name))]

    def authenticate(self, name: str, password: str) -> UserInfo | None:
        """The user if `password` is theirs, else None (same cost for unknown names)."""
        password = password[:MAX_PASSWORD]
        with self._sessions() as session:
            row = session.scalar(select(User).where(User.name == name)) if name else None
            if row is None:
                check_password_hash(_DUMMY_HASH, password)
                return None
            if not check_password_hash(row.password_hash, password):
                return None
            return UserInfo.from_row(row)

    def set_password(self, name: str, password: str) -> None:
        check_password(password)
        with self._sessions.begin() as session:
            row = self._require(session, name)
            row.password_hash = generate_password_hash(password)

    def set_admin(self, name: str, admin: bool) -> None:
        with self._sessions.begin() as session:
            self._require(session, name).is_admin = admin

    def delete(self, name: str) -> None:
        with self._sessions.begin() as session:
            self._require(session, name)
            session.execute(delete(User).where(User.name == name))

    @staticmethod
    def _require(session: Session, name: str) -> User:
        row = session.scalar(select(User).where(User.name == name))
        if row is None:
            raise InvalidRequest(f"no user named {name!r}")
        return row

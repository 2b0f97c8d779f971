"""The workload CA: generations of (root, signing CA, JWT key), sealed at rest, rotated
by :mod:`trustmesh.identity.rotation`."""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass, replace

from cryptography import x509

from trustmesh import crypto
from trustmesh.errors import StateError
from trustmesh.identity import rotation
from trustmesh.identity.rotation import Status
from trustmesh.identity.store import IdentityStore, StoredGeneration


@dataclass(frozen=True)
class CASettings:
    trust_domain: str
    root_ttl: dt.timedelta
    ca_ttl: dt.timedelta
    max_svid_ttl: dt.timedelta
    publish_delay: dt.timedelta = dt.timedelta(minutes=5)


@dataclass(frozen=True, repr=False)
class Generation:
    id: int
    status: Status
    root: x509.Certificate
    root_key: crypto.PrivateKey
    signing: x509.Certificate
    signing_key: crypto.PrivateKey
    jwt_key: crypto.PrivateKey
    jwt_kid: str
    created_at: dt.datetime
    activate_at: dt.datetime | None = None
    retire_at: dt.datetime | None = None

    def __repr__(self) -> str:
        return f"Generation(id={self.id}, status={self.status}, kid={self.jwt_kid})"

    def times(self) -> rotation.GenerationTimes:
        return rotation.GenerationTimes(
            id=self.id,
            status=self.status,
            root_not_before=self.root.not_valid_before_utc,
            root_not_after=self.root.not_valid_after_utc,
            signing_not_before=self.signing.not_valid_before_utc,
            signing_not_after=self.signing.not_valid_after_utc,
            activate_at=self.activate_at,
            retire_at=self.retire_at,
        )


class CertificateAuthority:
    """Holds the unsealed CA keys in memory; persists every change, sealed, to the store."""

    def __init__(
        self,
        settings: CASettings,
        store: IdentityStore,
        seal_key: crypto.SealKey,
        *,
        follower: bool = False,
    ) -> None:
        self.settings = settings
        self._store = store
        self._seal_key = seal_key
        #: A follower (a worker process) never rotates: it signs with what the leader
        #: stored, and reloads when the stored generations change.
        self.follower = follower
        self._followed: list[tuple[int, dict[str, object]]] = []
        self._generations: list[Generation] = []
        self._last_id = 0  # generation ids only grow, even after every generation retired
        self.version = 0
        #: What the last ``tick``/``force_rotation`` did, for the caller to report.
        self.last_actions: tuple[rotation.Action, ...] = ()

    # -- views ---------------------------------------------------------------------------
    @property
    def active(self) -> Generation:
        for g in self._generations:
            if g.status is Status.ACTIVE:
                return g
        raise StateError("the CA has no active generation")

    @property
    def generations(self) -> tuple[Generation, ...]:
        return tuple(self._generations)

    @property
    def issuer(self) -> crypto.Issuer:
        active = self.active
        return crypto.Issuer(active.signing, active.signing_key)

    @property
    def chain_tail(self) -> tuple[x509.Certificate, ...]:
        """What follows a leaf in an X.509-SVID: the signing CA."""
        return (self.active.signing,)

    @property
    def x509_roots(self) -> tuple[x509.Certificate, ...]:
        """The trust bundle: every published root (prepared, active, retiring)."""
        return tuple(g.root for g in self._generations)

    @property
    def jwt_public_keys(self) -> dict[str, crypto.PublicKey]:
        return {g.jwt_kid: g.jwt_key.public_key() for g in self._generations}

    # -- lifecycle -----------------------------------------------------------------------
    def load(self, now: dt.datetime) -> None:
        """Open the stored generations (or create the first) and bring them up to date."""
        stored = self._store.load_generations()
        expected = f"spiffe://{self.settings.trust_domain}"
        for gen in stored:
            root = crypto.certs_from_pem(str(gen.doc.get("root", "")).encode())[0]
            if crypto.uri_sans(root) != [expected]:
                found = ", ".join(crypto.uri_sans(root)) or "no trust domain"
                raise StateError(
                    f"the state directory holds the CA of {found}, not {expected}: "
                    "use another --state directory for another trust domain"
                )
        self._generations = [self._open(s) for s in stored]
        self._followed = [(g.id, g.doc) for g in stored]
        if self.follower:
            if not self._generations:
                raise StateError("no CA in the store yet: the leader creates it")
            return
        self.tick(now)

    def follow(self) -> bool:
        """Reload the generations if the leader changed them. True when anything changed."""
        stored = self._store.load_generations()
        seen = [(g.id, g.doc) for g in stored]
        if seen == self._followed:
            return False
        self._generations = [self._open(g) for g in stored]
        self._followed = seen
        self.version += 1
        return True

    def tick(self, now: dt.datetime) -> bool:
        """Apply the rotation plan at ``now``. True when anything changed."""
        if self.follower:
            return self.follow()
        settings = rotation.RotationSettings(
            max_svid_ttl=self.settings.max_svid_ttl, publish_delay=self.settings.publish_delay
        )
        actions = rotation.plan(now, [g.times() for g in self._generations], settings)
        for action in actions:
            self._apply(action, now)
        self.last_actions = tuple(actions)
        if actions:
            self._persist()
        return bool(actions)

    def force_rotation(self, now: dt.datetime) -> None:
        """Prepare the next generation now; it signs once the publish delay has passed."""
        if any(g.status is Status.PREPARED for g in self._generations):
            return
        settings = rotation.RotationSettings(
            self.settings.max_svid_ttl, self.settings.publish_delay
        )
        action = rotation.force_prepare(now, settings)
        self._apply(action, now)
        self.last_actions = (action,)
        self._persist()

    def _apply(self, action: rotation.Action, now: dt.datetime) -> None:
        match action:
            case rotation.CreateInitial():
                self._generations.append(self._new_generation(now, Status.ACTIVE, None))
            case rotation.Prepare(activate_at=activate_at):
                self._generations.append(self._new_generation(now, Status.PREPARED, activate_at))
            case rotation.Activate(generation=gen_id, retire_previous_at=retire_at):
                # A prepared generation's signing CA was made when it was published and
                # signs nothing until now: give it a fresh one, valid for ca_ttl from now.
                self._generations = [
                    replace(g, status=Status.RETIRING, retire_at=retire_at)
                    if g.status is Status.ACTIVE
                    else replace(self._renew_signing(g, now), status=Status.ACTIVE, activate_at=now)
                    if g.id == gen_id
                    else g
                    for g in self._generations
                ]
            case rotation.Retire(generation=gen_id):
                self._generations = [g for g in self._generations if g.id != gen_id]
            case rotation.RenewSigningCA(generation=gen_id):
                self._generations = [
                    self._renew_signing(g, now) if g.id == gen_id else g for g in self._generations
                ]
        self.version += 1

    def _new_generation(
        self, now: dt.datetime, status: Status, activate_at: dt.datetime | None
    ) -> Generation:
        gen_id = self._last_id = max([self._last_id, *(g.id for g in self._generations)]) + 1
        td = self.settings.trust_domain
        root_key = crypto.generate_key()
        root = crypto.create_root_ca(
            td, root_key, now=now, ttl=self.settings.root_ttl, label=str(gen_id)
        )
        signing_key = crypto.generate_key()
        signing = crypto.create_intermediate_ca(
            td,
            signing_key.public_key(),
            crypto.Issuer(root, root_key),
            now=now,
            ttl=self.settings.ca_ttl,
            label=f"{gen_id}.1",
        )
        jwt_key = crypto.generate_key()
        return Generation(
            id=gen_id,
            status=status,
            root=root,
            root_key=root_key,
            signing=signing,
            signing_key=signing_key,
            jwt_key=jwt_key,
            jwt_kid=crypto.key_id(jwt_key.public_key()),
            created_at=now,
            activate_at=activate_at,
        )

    def _renew_signing(self, g: Generation, now: dt.datetime) -> Generation:
        key = crypto.generate_key()
        cert = crypto.create_intermediate_ca(
            self.settings.trust_domain,
            key.public_key(),
            crypto.Issuer(g.root, g.root_key),
            now=now,
            ttl=self.settings.ca_ttl,
            label=f"{g.id}.{now.strftime('%Y%m%d%H%M%S')}",
        )
        return replace(g, signing=cert, signing_key=key)

    # -- persistence (private keys sealed, bound to their purpose) -------------------------
    def _context(self, gen_id: int, what: str) -> bytes:
        return f"trustmesh/identity/{self.settings.trust_domain}/{gen_id}/{what}".encode()

    def _seal(self, gen_id: int, what: str, key: crypto.PrivateKey) -> str:
        blob = crypto.seal(
            crypto.private_key_to_der(key), self._seal_key, context=self._context(gen_id, what)
        )
        return base64.b64encode(blob).decode("ascii")

    def _unseal(self, gen_id: int, what: str, value: object) -> crypto.PrivateKey:
        if not isinstance(value, str):
            raise StateError(f"CA generation {gen_id}: {what} is missing")
        der = crypto.open_sealed(
            base64.b64decode(value), self._seal_key, context=self._context(gen_id, what)
        )
        return crypto.private_key_from_der(der)

    def _persist(self) -> None:
        self._persist_docs()
        self._followed = [(g.id, g.doc) for g in self._store.load_generations()]

    def _persist_docs(self) -> None:
        docs = [
            StoredGeneration(
                g.id,
                {
                    "status": str(g.status),
                    "root": crypto.cert_pem(g.root),
                    "root_key": self._seal(g.id, "root-key", g.root_key),
                    "signing": crypto.cert_pem(g.signing),
                    "signing_key": self._seal(g.id, "signing-key", g.signing_key),
                    "jwt_key": self._seal(g.id, "jwt-key", g.jwt_key),
                    "jwt_kid": g.jwt_kid,
                    "created_at": g.created_at.isoformat(),
                    "activate_at": g.activate_at.isoformat() if g.activate_at else None,
                    "retire_at": g.retire_at.isoformat() if g.retire_at else None,
                },
            )
            for g in self._generations
        ]
        self._store.save_generations(docs)

    def _open(self, stored: StoredGeneration) -> Generation:
        d = stored.doc

        def when(key: str) -> dt.datetime | None:
            value = d.get(key)
            return dt.datetime.fromisoformat(value) if isinstance(value, str) else None

        created = when("created_at")
        if created is None:
            raise StateError(f"CA generation {stored.id} is corrupt")
        return Generation(
            id=stored.id,
            status=Status(str(d["status"])),
            root=crypto.certs_from_pem(str(d["root"]).encode())[0],
            root_key=self._unseal(stored.id, "root-key", d.get("root_key")),
            signing=crypto.certs_from_pem(str(d["signing"]).encode())[0],
            signing_key=self._unseal(stored.id, "signing-key", d.get("signing_key")),
            jwt_key=self._unseal(stored.id, "jwt-key", d.get("jwt_key")),
            jwt_kid=str(d["jwt_kid"]),
            created_at=created,
            activate_at=when("activate_at"),
            retire_at=when("retire_at"),
        )

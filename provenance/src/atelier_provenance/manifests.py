"""C2PA content credentials: sign every delivered asset, read and verify a file's manifest.

Signing (``sign_asset``, ``sign_pdf``) embeds a manifest with

* ``c2pa.actions.v2``: ``c2pa.created`` with digital source type ``trainedAlgorithmicMedia`` (the IPTC term
  for generative-AI output), and ``c2pa.placed`` when ingredients (an ad's product photo) are given;
* ``org.atelier.generation``: job, tenant reference, plan id, model, seed, the watermark payload and the
  size the mark was embedded at (``atelier verify`` resizes back to it), and the signing time;
* each ingredient (``componentOf``) with its own hash, so the product photo is bound into the claim.

Credentials come from settings (``ATELIER_C2PA_CERT_PATH`` chain + ``ATELIER_C2PA_KEY_PATH``) or, when those
are unset, from a development CA and an ES256 signing certificate created on first use under
``{home}/c2pa/`` (the leaf carries the emailProtection EKU that the C2PA trust model accepts). Reading
(``read_manifest``) verifies the signature and the hard binding, and reports

* ``trusted``: valid, and the signer chains to a trust anchor (the settings' anchors, else the dev CA);
* ``untrusted``: the signature and hashes are valid but the signer is not anchored here;
* ``invalid``: the manifest does not verify (the pixels or the manifest changed after signing);
* ``absent``: no manifest in the file.

Everything runs offline: no OCSP, no remote manifests, no time-stamp authority unless one is configured.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import c2pa
from atelier_runtime.settings import Settings
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

ATELIER_ASSERTION = "org.atelier.generation"
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
GENERATOR = "Atelier"
_EKU_EMAIL_PROTECTION = "1.3.6.1.5.5.7.3.4"


class ProvenanceError(RuntimeError):
    """Signing failed (bad credentials, unsupported format)."""


@dataclass(frozen=True)
class Credentials:
    chain_pem: str  # leaf first, then intermediates/root
    key_pem: str
    anchors_pem: str | None  # roots that read as trusted
    source: str  # "settings" | "development CA"
    tsa_url: str | None = None


# --- credentials ----------------------------------------------------------------------------------

def _write_private(path: Path, data: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as fh:
        fh.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _dev_ca(folder: Path) -> None:
    """Create the development CA and its signing certificate (once; concurrent first uses are safe)."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / ".create.lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # another process is creating it; the caller waits for the files
    try:
        now = dt.datetime.now(dt.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Atelier (development)"),
                             x509.NameAttribute(NameOID.COMMON_NAME, "Atelier Development Root CA")])
        no_ku = dict.fromkeys(("content_commitment", "key_encipherment", "data_encipherment", "key_agreement", "encipher_only", "decipher_only"), False)
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
              .not_valid_after(now + dt.timedelta(days=3650))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=False, key_cert_sign=True, crl_sign=True, **no_ku),
                             critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Atelier (development)"),
                                         x509.NameAttribute(NameOID.COMMON_NAME, "Atelier Development Signer")]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=825))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **no_ku),
                               critical=True)
                .add_extension(x509.ExtendedKeyUsage([ObjectIdentifier(_EKU_EMAIL_PROTECTION)]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        pem = serialization.Encoding.PEM
        _write_private(folder / "ca-key.pem", ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                                   serialization.NoEncryption()).decode())
        _write_private(folder / "signer-key.pem", key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                                    serialization.NoEncryption()).decode())
        _write_private(folder / "ca.pem", ca.public_bytes(pem).decode())
        # the chain file last: its presence means the set is complete
        _write_private(folder / "signer-chain.pem", leaf.public_bytes(pem).decode() + ca.public_bytes(pem).decode())
    finally:
        os.close(fd)
        lock.unlink(missing_ok=True)


def dev_ca_dir(settings: Settings) -> Path:
    return (settings.home / "c2pa").resolve()


def load_credentials(settings: Settings, *, create: bool = True) -> Credentials | None:
    """Production credentials from settings, else the development CA (created on first use when ``create``)."""
    anchors = settings.c2pa_trust_anchors_path.read_text() if settings.c2pa_trust_anchors_path else None
    if settings.c2pa_cert_path or settings.c2pa_key_path:
        if not (settings.c2pa_cert_path and settings.c2pa_key_path):
            raise ProvenanceError("set both ATELIER_C2PA_CERT_PATH and ATELIER_C2PA_KEY_PATH (or neither, for the "
                                  "development CA)")
        return Credentials(settings.c2pa_cert_path.read_text(), settings.c2pa_key_path.read_text(), anchors, "settings",
                           settings.c2pa_tsa_url)
    folder = dev_ca_dir(settings)
    chain = folder / "signer-chain.pem"
    if not chain.is_file():
        if not create:
            return None

        _dev_ca(folder)
        deadline = time.monotonic() + 30
        while not chain.is_file():
            if time.monotonic() > deadline:
                raise ProvenanceError(f"the development CA in {folder} was not created (stale {folder}/.create.lock?)")
            time.sleep(0.05)
    return Credentials(chain.read_text(), (folder / "signer-key.pem").read_text(),
                       anchors or (folder / "ca.pem").read_text(), "development CA", settings.c2pa_tsa_url)


def trust_anchors(settings: Settings) -> str | None:
    """PEM roots a reader trusts: the configured anchors, else the local development CA if there is one."""
    if settings.c2pa_trust_anchors_path:
        return settings.c2pa_trust_anchors_path.read_text()
    ca = dev_ca_dir(settings) / "ca.pem"
    return ca.read_text() if ca.is_file() else None


# --- signing --------------------------------------------------------------------------------------

def _context(anchors: str | None) -> Any:
    config: dict[str, Any] = {
        "builder": {"thumbnail": {"enabled": False}},
        "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
    }
    if anchors:
        config["trust"] = {"user_anchors": anchors}
    return c2pa.Context.from_dict(config)


@dataclass(frozen=True)
class Ingredient:
    """An input bound into the claim (an ad's product photo)."""

    title: str
    data: bytes
    content_type: str = "image/png"
    relationship: str = "componentOf"


def sign_asset(data: bytes, content_type: str, *, credentials: Credentials, title: str, generation: dict[str, Any],
               ingredients: list[Ingredient] | None = None, software_version: str = "0.1.0") -> bytes:
    """Return ``data`` with an embedded, signed C2PA manifest (see the module docstring for its content).

    Args:
        data, content_type: the asset (``image/png``, ``image/jpeg``, ``application/pdf``, ...).
        credentials: from ``load_credentials``.
        title: the asset's name in the manifest.
        generation: the Atelier assertion (job_id, plan_id, model, seed, watermark, ...); ``signed_at`` is added.
        ingredients: inputs to bind in (``c2pa.placed`` is recorded for them).
    """
    generation = {**generation, "signed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    actions: list[dict[str, Any]] = [{
        "action": "c2pa.created", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
        "softwareAgent": {"name": GENERATOR, "version": software_version},
    }]
    for n, ing in enumerate(ingredients or []):
        actions.append({"action": "c2pa.placed", "parameters": {"ingredientIds": [f"ingredient-{n}"]},
                        "description": f"{ing.title} placed into the generated image"})
    manifest = {
        "claim_generator_info": [{"name": GENERATOR, "version": software_version}],
        "title": title,
        "format": content_type,
        "assertions": [
            {"label": "c2pa.actions.v2", "data": {"actions": actions}},
            {"label": ATELIER_ASSERTION, "data": generation},
        ],
    }
    try:
        builder = c2pa.Builder(manifest, context=_context(credentials.anchors_pem))
        for n, ing in enumerate(ingredients or []):
            builder.add_ingredient({"title": ing.title, "relationship": ing.relationship, "label": f"ingredient-{n}"},
                                   ing.content_type, io.BytesIO(ing.data))
        signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, credentials.chain_pem.encode(),
                                                           credentials.key_pem.encode(), credentials.tsa_url))
        out = io.BytesIO()
        builder.sign(signer, content_type, io.BytesIO(data), out)
    except c2pa.C2paError as exc:
        raise ProvenanceError(f"C2PA signing failed: {exc}") from exc
    return out.getvalue()


def sign_pdf(data: bytes, *, credentials: Credentials, title: str, generation: dict[str, Any],
             ingredients: list[Ingredient] | None = None) -> bytes:
    """Sign a storybook PDF the same way as an image (for the renderer's PDF output)."""
    return sign_asset(data, "application/pdf", credentials=credentials, title=title, generation=generation,
                      ingredients=ingredients)


# --- reading --------------------------------------------------------------------------------------

@dataclass
class ProvenanceReport:
    """What a file's C2PA manifest says and whether it holds."""

    state: str  # trusted | untrusted | invalid | absent
    failures: list[str] = field(default_factory=list)
    generation: dict[str, Any] = field(default_factory=dict)
    digital_source_type: str | None = None
    actions: list[str] = field(default_factory=list)
    ingredients: list[str] = field(default_factory=list)
    signer: dict[str, Any] = field(default_factory=dict)
    claim_generator: str | None = None
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.state in ("trusted", "untrusted")

    def as_dict(self) -> dict[str, Any]:
        g = self.generation
        return {
            "state": self.state, "valid": self.valid, "trusted": self.state == "trusted", "failures": self.failures,
            "job_id": g.get("job_id"), "plan_id": g.get("plan_id"), "model": g.get("model"), "seed": g.get("seed"),
            "created_at": g.get("signed_at"), "watermark": g.get("watermark"), "generation": g,
            "digital_source_type": self.digital_source_type, "actions": self.actions, "ingredients": self.ingredients,
            "signer": self.signer, "claim_generator": self.claim_generator, "error": self.error,
        }


_STATES = {"Trusted": "trusted", "Valid": "untrusted", "Invalid": "invalid"}


def read_manifest(data: bytes, content_type: str | None = None, *, anchors: str | None = None) -> ProvenanceReport:
    """Verify and read the active manifest of ``data`` (format sniffed when ``content_type`` is None)."""
    try:
        reader = c2pa.Reader.try_create(content_type, io.BytesIO(data), None, _context(anchors))
    except c2pa.C2paError as exc:
        # a manifest that cannot even be parsed is as good as a broken one
        return ProvenanceReport(state="invalid", error=str(exc))
    if reader is None:
        return ProvenanceReport(state="absent")
    with reader:
        state = _STATES.get(reader.get_validation_state() or "", "invalid")
        results = reader.get_validation_results() or {}
        manifest = reader.get_active_manifest() or {}
    active = results.get("activeManifest") or {}
    failures = [f"{f.get('code')}: {f.get('explanation', '')}".strip() for f in active.get("failure", [])]
    report = ProvenanceReport(state=state, failures=failures)
    for assertion in manifest.get("assertions", []):
        label, body = assertion.get("label", ""), assertion.get("data") or {}
        if label == ATELIER_ASSERTION:
            report.generation = dict(body)
        elif label.startswith("c2pa.actions"):
            for act in body.get("actions", []):
                report.actions.append(act.get("action", ""))
                if act.get("action") == "c2pa.created":
                    report.digital_source_type = act.get("digitalSourceType")
    report.ingredients = [i.get("title", "") for i in manifest.get("ingredients", [])]
    sig = manifest.get("signature_info") or {}
    report.signer = {k: sig.get(k) for k in ("issuer", "common_name", "alg", "time") if sig.get(k) is not None}
    info = manifest.get("claim_generator_info") or []
    report.claim_generator = info[0].get("name") if info and isinstance(info[0], dict) else None
    return report


def summary(report: ProvenanceReport) -> str:
    """One line for logs and the CLI."""
    g = report.generation
    return json.dumps({"state": report.state, "job": g.get("job_id"), "model": g.get("model"),
                       "signed_at": g.get("signed_at")})

"""The local Kafka broker: KRaft single node, run from the broker jars on Maven Central (or ``KAFKA_HOME``).

Clients use its PLAINTEXT listener (``stack.kafka_port``). With ``stack.kafka_sasl_port`` set it also serves a
SASL_SSL listener: TLS with a certificate signed by a CA generated once into ``<run_dir>/kafka/tls`` (the
``cryptography`` package; clients trust ``tls/ca.crt``) and SCRAM-SHA-256/512 authentication of one user whose
credentials are stored when the storage is formatted. The password comes from the settings (env or a file) and is
never logged, never on a command line and never in a file the stack writes: only salted SCRAM values are.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import os
import re
import secrets
import shutil
import subprocess
import uuid
from base64 import b64encode, urlsafe_b64encode
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ClusterMetadata,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from pydantic import SecretStr

from driftloop.stack import kafka_jars, kafka_roles, toolchain
from driftloop.stack.exceptions import ComponentNotFound, StackError
from driftloop.stack.process import ServerProcess
from foundation.paths import DEPLOY_DIR
from foundation.retry import policy
from foundation.settings import Settings
from streams.client import client_config
from streams.topics import ensure_topics

log = logging.getLogger(__name__)

KAFKA_DEPLOY = DEPLOY_DIR / "local" / "kafka"
_COMPLETE = ".complete"

#: SCRAM mechanisms of the SASL_SSL listener -> (hash for PBKDF2, confluent-kafka's enum).
SCRAM_MECHANISMS = {
    "SCRAM-SHA-256": ("sha256", ScramMechanism.SCRAM_SHA_256),
    "SCRAM-SHA-512": ("sha512", ScramMechanism.SCRAM_SHA_512),
}
SCRAM_ITERATIONS = 8192
CERT_DAYS = 825


def server(settings: Settings) -> ServerProcess:
    return ServerProcess("kafka", settings.stack.run_dir / "kafka")


def classpath(settings: Settings) -> str:
    """The broker's class path: ``$KAFKA_HOME/libs`` when set, else the jars Maven resolved into the cache.

    Raises:
        ComponentNotFound: no KAFKA_HOME and Maven is missing or failed.
    """
    if settings.stack.kafka_home:
        libs = settings.stack.kafka_home / "libs"
        if not any(libs.glob("kafka_*.jar")):
            raise ComponentNotFound(f"KAFKA_HOME={settings.stack.kafka_home} has no libs/kafka_*.jar")
        return f"{libs}/*"
    return f"{resolve_jars(settings)}/*"


def resolve_jars(settings: Settings) -> Path:
    """Fetch the broker jars once into ``<cache_dir>/kafka-<version>/libs``; later calls reuse the folder.

    The version's lock file (``deploy/local/kafka/jars-<version>.lock``) pins every jar and its hash: they are
    downloaded from Maven Central, no Maven needed. A version without a lock is resolved with ``mvn`` from the POM.

    Raises:
        ComponentNotFound: no lock for the version and no Maven.
        StackError: a download, a hash or Maven failed.
    """
    version = settings.stack.kafka_version
    libs = settings.stack.cache_dir / f"kafka-{version}" / "libs"
    if (libs / _COMPLETE).exists():
        return libs
    staging = libs.with_name("libs.partial")
    shutil.rmtree(staging, ignore_errors=True)
    lock = kafka_jars.lock_path(KAFKA_DEPLOY, version)
    if lock.exists():
        kafka_jars.fetch(kafka_jars.read_lock(lock), staging)
    else:
        _resolve_with_maven(version, staging)
    (staging / _COMPLETE).touch()
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    return libs


def _resolve_with_maven(version: str, staging: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ComponentNotFound(
            f"Kafka {version} has no lock file in {KAFKA_DEPLOY}: Maven (`mvn`) is needed once to fetch its jars "
            "(apt-get install maven), or `driftloop stack lock-kafka` on a machine that has it"
        )
    argv = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(KAFKA_DEPLOY / "pom.xml"),
        f"-Dkafka.version={version}",
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    log.info("resolving Kafka %s broker jars with Maven (once)", version)
    done = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0 or not any(staging.glob("kafka_*.jar")):
        raise StackError(f"Maven could not resolve the Kafka broker jars:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def java() -> str:
    """The broker's Java (see :func:`driftloop.stack.toolchain.java`)."""
    return toolchain.java()


def write_config(settings: Settings) -> Path:
    """Write server.properties and log4j2.xml into the run folder; returns the properties file.

    With ``stack.kafka_sasl_port`` set, the SASL_SSL listener is added and its certificates are made (once).
    """
    proc = server(settings)
    data_dir = (proc.run_dir / "data").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    stack = settings.stack
    sasl_listener, sasl_config = "", ""
    if stack.kafka_sasl_port:
        keystore = ensure_certificates(settings)
        sasl_listener = f",SASL_SSL://{stack.host}:{stack.kafka_sasl_port}"
        sasl_config = (
            (KAFKA_DEPLOY / "sasl_ssl.properties")
            .read_text()
            .format(
                mechanisms=",".join(SCRAM_MECHANISMS), keystore=keystore.resolve(), admin_user=stack.kafka_sasl_username
            )
        )
    properties = (
        (KAFKA_DEPLOY / "server.properties")
        .read_text()
        .format(
            host=stack.host,
            port=stack.kafka_port,
            controller_port=stack.kafka_controller_port,
            data_dir=data_dir,
            sasl_listener=sasl_listener,
            sasl_config=sasl_config,
        )
    )
    target = proc.run_dir / "server.properties"
    target.write_text(properties)
    shutil.copyfile(KAFKA_DEPLOY / "log4j2.xml", proc.run_dir / "log4j2.xml")
    return target


def tls_dir(settings: Settings) -> Path:
    return server(settings).run_dir / "tls"


def ca_file(settings: Settings) -> Path:
    """The CA certificate that clients of the SASL_SSL listener trust (``kafka.ssl_ca_location``)."""
    return tls_dir(settings) / "ca.crt"


def ensure_certificates(settings: Settings) -> Path:
    """Make a CA and a broker certificate signed by it, once; returns the broker's PEM key store (key + chain).

    The broker certificate names ``stack.host`` (and ``localhost``, ``127.0.0.1``), so clients verify the host name.
    Both are made again when the host changes or the certificate expires within 30 days; the CA key is not kept.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = tls_dir(settings)
    keystore, ca_path = folder / "broker.pem", ca_file(settings)
    names = _subject_names(settings.stack.host)
    if keystore.exists() and ca_path.exists():
        current = x509.load_pem_x509_certificate(keystore.read_bytes().split(b"-----END PRIVATE KEY-----")[1].strip())
        valid = current.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=30)
        covered = set(current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) >= set(names)
        if valid and covered:
            return keystore

    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"driftloop local CA {secrets.token_hex(4)}")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, settings.stack.host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    folder.mkdir(parents=True, exist_ok=True)
    # Java reads an unencrypted PKCS#8 key from a PEM key store; only the owner may read the file.
    _write_private(
        keystore,
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + cert.public_bytes(pem)
        + ca.public_bytes(pem),
    )
    ca_path.write_bytes(ca.public_bytes(pem))
    log.info("generated a CA and a broker certificate for %s into %s", ", ".join(str(n.value) for n in names), folder)
    return keystore


def _subject_names(host: str) -> list:
    from cryptography import x509

    names: list = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        extra = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        extra = x509.DNSName(host)
    return names if extra in names else [*names, extra]


def _write_private(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def sasl_password(settings: Settings) -> str:
    """The SASL_SSL listener's password: ``stack.kafka_sasl_password``, else the file ``kafka_sasl_password_file``.

    Raises:
        StackError: the listener is on but no (non-empty) password is configured; the message names the variables.
    """
    stack = settings.stack
    password = stack.kafka_sasl_password.get_secret_value() if stack.kafka_sasl_password else None
    if password is None and stack.kafka_sasl_password_file is not None:
        try:
            password = stack.kafka_sasl_password_file.read_text().rstrip("\r\n")
        except OSError as exc:
            raise StackError(f"cannot read stack.kafka_sasl_password_file: {exc.strerror}") from None
    if not password:
        raise StackError(
            "stack.kafka_sasl_port is set but there is no password: set DRIFTLOOP_STACK__KAFKA_SASL_PASSWORD "
            "or DRIFTLOOP_STACK__KAFKA_SASL_PASSWORD_FILE"
        )
    return password


def sasl_client_settings(settings: Settings, mechanism: str = "SCRAM-SHA-512") -> Settings:
    """``settings`` with its Kafka clients pointed at the stack's SASL_SSL listener as the stack's user."""
    stack = settings.stack
    kafka = settings.kafka.model_copy(
        update={
            "bootstrap_servers": f"{stack.host}:{stack.kafka_sasl_port}",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": mechanism,
            "sasl_username": stack.kafka_sasl_username,
            "sasl_password": SecretStr(sasl_password(settings)),
            "sasl_password_file": None,
            "ssl_ca_location": ca_file(settings).resolve(),
        }
    )
    return settings.model_copy(update={"kafka": kafka})


def _scram_arguments(settings: Settings) -> list[str]:
    """``--add-scram`` arguments with salted credentials (RFC 5802 SaltedPassword), not the password itself."""
    password = sasl_password(settings).encode()
    args = []
    for mechanism, (digest, _) in SCRAM_MECHANISMS.items():
        salt = secrets.token_bytes(24)
        salted = hashlib.pbkdf2_hmac(digest, password, salt, SCRAM_ITERATIONS)
        args += [
            "--add-scram",
            f"{mechanism}=[name={settings.stack.kafka_sasl_username},iterations={SCRAM_ITERATIONS},"
            f'salt="{b64encode(salt).decode()}",saltedpassword="{b64encode(salted).decode()}"]',
        ]
    return args


def upsert_scram_user(settings: Settings, timeout_s: float = 30.0) -> None:
    """Create or update the stack's SCRAM users through the PLAINTEXT listener: its own, and one per role with that
    role's ACLs (storage formatted before the SASL_SSL listener was turned on, or a changed password)."""
    password = sasl_password(settings)
    admin = AdminClient(client_config(settings, {"log_level": 0}))
    users = {settings.stack.kafka_sasl_username: password}
    users |= {
        kafka_roles.username(settings, role): kafka_roles.role_password(password, role) for role in kafka_roles.ROLES
    }
    for user, secret in users.items():
        for _, mechanism in SCRAM_MECHANISMS.values():  # one request per mechanism: the broker refuses a user twice
            info = ScramCredentialInfo(mechanism, SCRAM_ITERATIONS)
            upsert = UserScramCredentialUpsertion(user, info, secret.encode())
            for future in admin.alter_user_scram_credentials([upsert], request_timeout=timeout_s).values():
                future.result()
    apply_acls(admin, kafka_roles.all_grants(settings), timeout_s)


def apply_acls(admin: AdminClient, grants: list[kafka_roles.Grant], timeout_s: float = 30.0) -> None:
    """Create ``grants`` (creating an ACL that exists is a no-op) and wait until the broker enforces them: ACLs
    reach the authorizer through the metadata log, a moment after the controller accepted them."""
    wanted = {grant.binding() for grant in grants}
    for future in admin.create_acls(list(wanted), request_timeout=timeout_s).values():
        future.result()
    everything = AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY, AclPermissionType.ANY
    )

    def enforced() -> None:
        missing = wanted - set(admin.describe_acls(everything, request_timeout=timeout_s).result())
        if missing:
            raise StackError(f"{len(missing)} ACLs not enforced yet")

    policy(retry_on=StackError, deadline_s=timeout_s, initial_s=0.1, max_s=1.0, what="ACLs to apply")(enforced)


def role_client_settings(settings: Settings, role: str, mechanism: str = "SCRAM-SHA-512") -> Settings:
    """``settings`` with its Kafka clients on the stack's SASL_SSL listener as ``role``'s own user."""
    client = sasl_client_settings(settings, mechanism)
    kafka = client.kafka.model_copy(
        update={
            "sasl_username": kafka_roles.username(settings, role),
            "sasl_password": SecretStr(kafka_roles.role_password(sasl_password(settings), role)),
        }
    )
    return client.model_copy(update={"kafka": kafka})


def _java_argv(settings: Settings, main_class: str, *args: str) -> list[str]:
    run_dir = server(settings).run_dir.resolve()
    heap = settings.stack.kafka_heap
    return [
        java(),
        f"-Xms{heap}",
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        *settings.stack.kafka_jvm_flags,
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={run_dir / 'log4j2.xml'}",
        "-cp",
        classpath(settings),
        main_class,
        *args,
    ]


def format_storage(settings: Settings, properties: Path) -> bool:
    """Format the KRaft storage once (a fresh cluster id, the SCRAM user when the SASL_SSL listener is on);
    False when it was formatted before."""
    data_dir = server(settings).run_dir / "data"
    if (data_dir / "meta.properties").exists():
        return False
    cluster_id = urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    tool = ["kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(properties.resolve())]
    argfile = server(settings).run_dir / "format.args"
    if settings.stack.kafka_sasl_port:
        # The launcher reads the main class and its arguments from a private file: the salted credentials stay
        # off the process list.
        lines = [_argfile_quote(arg) for arg in [*tool, *_scram_arguments(settings)]]
        _write_private(argfile, "\n".join(lines).encode())
        tool = [f"@{argfile.resolve()}"]
    try:
        done = subprocess.run(_java_argv(settings, *tool), capture_output=True, text=True, check=False)  # noqa: S603
    finally:
        argfile.unlink(missing_ok=True)
    if done.returncode != 0:
        output = re.sub(r'(salt|saltedpassword)="[^"]*"', r'\1="***"', done.stdout[-2000:] + done.stderr[-2000:])
        raise StackError(f"formatting Kafka storage failed:\n{output}")
    return True


def _argfile_quote(arg: str) -> str:
    """One argument of a java launcher argument file (``java @file``), quoted."""
    return "'" + arg.replace("\\", "\\\\").replace("'", "\\'") + "'"


def start(settings: Settings) -> int:
    """Start the broker (formatting storage on first start); returns its PID. Does not wait."""
    properties = write_config(settings)
    format_storage(settings, properties)
    return server(settings).start(_java_argv(settings, "kafka.Kafka", str(properties.resolve())))


def is_ready(settings: Settings, timeout_s: float = 2.0) -> bool:
    """True when the broker answers a metadata request with at least one broker."""
    # log_level 0: "connection refused" while the broker starts is expected, not worth a line per retry.
    return len(_metadata(settings, timeout_s, {"socket.connection.setup.timeout.ms": 1000}).brokers) > 0


def _metadata(settings: Settings, timeout_s: float, overrides: dict | None = None) -> ClusterMetadata:
    """The cluster's metadata. A refused password or an untrusted certificate raises its own clear
    ``KafkaClientError`` (served by ``poll``), not "Broker transport failure"."""
    admin = AdminClient(client_config(settings, {"log_level": 0, **(overrides or {})}))
    try:
        return admin.list_topics(timeout=timeout_s)
    except KafkaException:
        admin.poll(0)  # raises the client's fatal error, if it reported one
        raise


def up(settings: Settings) -> dict[str, str]:
    """Start the broker unless it runs, wait until ready (both listeners), create the topics.

    Returns:
        Topic -> created/exists.
    """
    proc = server(settings)
    if proc.pid() is None:
        start(settings)
    proc.wait_ready(lambda: is_ready(settings), settings.stack.ready_timeout_s, f"broker {settings.kafka_bootstrap}")
    if settings.stack.kafka_sasl_port:
        upsert_scram_user(settings)  # idempotent; covers a storage formatted before the listener was turned on
        client = sasl_client_settings(settings)
        proc.wait_ready(lambda: is_ready(client), settings.stack.ready_timeout_s, f"SASL_SSL {client.kafka_bootstrap}")
        log.info(
            "SASL_SSL listener ready at %s (user %s, CA %s)",
            client.kafka_bootstrap,
            settings.stack.kafka_sasl_username,
            ca_file(settings),
        )
    return ensure_topics(settings)


def describe(settings: Settings, timeout_s: float = 3.0) -> str:
    """One line on the broker's health: brokers and topics seen, and the SASL_SSL listener when it is on (probed
    with the stack's credentials; the line names the user and the CA, never the password). Raises on failure."""
    metadata = _metadata(settings, timeout_s)
    ours = [t for t in metadata.topics if t.startswith(settings.kafka.topic_prefix)]
    line = f"{len(metadata.brokers)} broker(s) at {settings.kafka_bootstrap}, {len(ours)} driftloop topic(s)"
    if settings.stack.kafka_sasl_port and settings.kafka.bootstrap_servers is None:
        client = sasl_client_settings(settings)
        brokers = _metadata(client, timeout_s).brokers
        line += (
            f"; SASL_SSL at {client.kafka_bootstrap}: {len(brokers)} broker(s), user "
            f"{client.kafka.sasl_username} ({client.kafka.sasl_mechanism}), CA {client.kafka.ssl_ca_location}"
        )
    return line

"""Turning pika's exceptions and AMQP close codes into lrtkit's errors, with advice."""

from __future__ import annotations

from pika import exceptions as pex

from lrtkit.errors import BrokerConfigError, BrokerError, ConnectionLost

# AMQP reply codes that matter here.
CONNECTION_FORCED = 320
ACCESS_REFUSED = 403
NOT_FOUND = 404
PRECONDITION_FAILED = 406
NOT_ALLOWED = 530

CONSUMER_TIMEOUT_ADVICE = (
    "RabbitMQ closed the channel because a job was held longer than the server's "
    "consumer_timeout; the job was requeued and this worker's lease is lost. Raise the limit "
    "above your longest job: set `consumer_timeout = 86400000` (milliseconds, or "
    "`consumer_timeout = false` on 3.x to disable) in rabbitmq.conf, or live with "
    "`rabbitmqctl eval 'application:set_env(rabbit, consumer_timeout, 86400000).'`; on "
    "RabbitMQ >= 3.12 the per-queue `x-consumer-timeout` argument that `lrtkit setup` "
    "declares (LRT_RABBITMQ_CONSUMER_TIMEOUT) is honoured instead"
)


def is_consumer_timeout(reply_code: int, reply_text: str) -> bool:
    """True for the channel close RabbitMQ sends when ``consumer_timeout`` fires."""
    text = reply_text.lower()
    return reply_code == PRECONDITION_FAILED and "acknowledgement" in text and "timed out" in text


def close_reason(exc: BaseException) -> tuple[int, str]:
    """(reply code, reply text) of a pika close exception, (0, str) for anything else."""
    if isinstance(exc, pex.ConnectionClosed | pex.ChannelClosed):
        return int(exc.reply_code), str(exc.reply_text)
    return 0, f"{type(exc).__name__}: {exc}"


def fatal_connection_error(exc: BaseException, where: str) -> BrokerConfigError | None:
    """A :class:`BrokerConfigError` when reconnecting cannot help (credentials, vhost)."""
    for cause in _causes(exc):
        found = _fatal(cause, where)
        if found is not None:
            return found
    return None


def _fatal(exc: BaseException, where: str) -> BrokerConfigError | None:
    if isinstance(exc, pex.ProbableAuthenticationError | pex.AuthenticationError):
        return BrokerConfigError(
            f"RabbitMQ at {where} refused the login: check the user name and password in "
            f"LRT_RABBITMQ_URL (or AMQP_URL) ({exc})"
        )
    if isinstance(exc, pex.ProbableAccessDeniedError):
        return BrokerConfigError(
            f"RabbitMQ at {where} refused access to the virtual host: check that the vhost in "
            f"LRT_RABBITMQ_URL exists and the user has permissions on it ({exc})"
        )
    if isinstance(exc, pex.ConnectionClosedByBroker):
        code, text = close_reason(exc)
        if code == ACCESS_REFUSED:
            return BrokerConfigError(
                f"RabbitMQ at {where} refused the login ({code} {text}): check the user name "
                "and password in LRT_RABBITMQ_URL (or AMQP_URL)"
            )
        if code == NOT_ALLOWED:
            return BrokerConfigError(
                f"RabbitMQ at {where} refused the virtual host ({code} {text}): check that the "
                "vhost in LRT_RABBITMQ_URL exists (URL-encode '/' as %2F) and the user may use it"
            )
    return None


def wrap(exc: BaseException, where: str, doing: str) -> BrokerError:
    """The lrtkit error for a pika exception raised while ``doing`` something."""
    fatal = fatal_connection_error(exc, where)
    if fatal is not None:
        return fatal
    if isinstance(exc, pex.ChannelClosedByBroker):
        code, text = close_reason(exc)
        if code == NOT_FOUND:
            return BrokerConfigError(f"{doing}: {text} (run `lrtkit setup` to create it)")
        if code == ACCESS_REFUSED:
            return BrokerConfigError(f"{doing}: {text} (the user lacks permissions)")
        return BrokerError(f"{doing}: RabbitMQ closed the channel ({code} {text})")
    if isinstance(exc, pex.IncompatibleProtocolError):
        return ConnectionLost(
            f"{doing}: {where} closed the connection during the AMQP handshake (not RabbitMQ, "
            f"amqp:// against a TLS port, or a node still starting): {detail(exc)}"
        )
    if isinstance(exc, pex.AMQPError | OSError):
        return ConnectionLost(f"{doing}: cannot reach RabbitMQ at {where}: {detail(exc)}")
    return BrokerError(f"{doing}: {type(exc).__name__}: {exc}")


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and the causes pika wraps in it (``.exception``, ``.exceptions``, ``args``)."""
    chain = [exc]
    seen = exc
    for _ in range(6):
        nested = [getattr(seen, "exception", None), *list(getattr(seen, "exceptions", ()))[-1:]]
        inner = next((a for a in [*nested, *seen.args] if isinstance(a, BaseException)), None)
        if inner is None:
            break
        chain.append(inner)
        seen = inner
    return chain


def detail(exc: BaseException) -> str:
    """What went wrong, unwrapping pika's wrappers down to the cause (refused, DNS, TLS...)."""
    seen = _causes(exc)[-1]
    text = str(seen)
    return f"{type(seen).__name__}: {text}" if text else type(seen).__name__

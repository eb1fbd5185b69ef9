"""The facade's logs: the log format both processes share lives in `tandem.logs` (stdlib only,
shipped with the contract package), so that the core never imports the facade."""

from tandem.logs import (
    TEXT_FORMAT,
    JsonFormatter,
    RequestIdFilter,
    configure_logging,
    make_handler,
    request_id_var,
)

__all__ = ["TEXT_FORMAT", "JsonFormatter", "RequestIdFilter", "configure_logging",
           "make_handler", "request_id_var"]

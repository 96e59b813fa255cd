"""SMTP sink: accepts every message on 127.0.0.1 and stores it as one .eml file.

Alert tests read the files instead of a real mailbox. Each file is the message as
received, preceded by X-Envelope-From/X-Envelope-To headers (so Bcc recipients are
visible), and appears atomically (written to a dot-file, then renamed).

Run: ``python -m local.smtp_sink --port P --dir D``
"""

from __future__ import annotations

import argparse
import signal
import time
import uuid
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


class EmlWriter:
    """aiosmtpd handler that writes each accepted message to ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802 (aiosmtpd hook name)
        content = envelope.original_content or b""
        headers = (
            f"X-Envelope-From: {envelope.mail_from}\r\n"
            f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
        ).encode()
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.eml"
        tmp = self.directory / f".{name}"
        tmp.write_bytes(headers + content)
        tmp.rename(self.directory / name)
        return "250 Message accepted for delivery"


def main() -> None:
    parser = argparse.ArgumentParser(description="SMTP sink writing .eml files")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    # Block the stop signals before the server thread starts, so only sigwait sees them.
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    controller = Controller(EmlWriter(args.dir), hostname="127.0.0.1", port=args.port)
    controller.start()
    print(f"SMTP sink on 127.0.0.1:{args.port}, writing to {args.dir}", flush=True)
    signal.sigwait(stop_signals)
    controller.stop()


if __name__ == "__main__":
    main()

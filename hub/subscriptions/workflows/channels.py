"""Channels a workflow sends a Communication over: email (SMTP) and SMS (an HTTP provider).

Each send carries the step's idempotency key: as the email's ``Message-ID`` and as the SMS
request's ``Idempotency-Key`` header, so that a send repeated after a crash (between the
provider accepting it and the hub recording it) can be recognised by the receiving side.
A :class:`ChannelError` says whether trying again may help.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate

import httpx

from hub.settings import Settings


class ChannelError(Exception):
    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class EmailChannel:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def available(self) -> bool:
        return bool(self.settings.smtp_host)

    async def send(self, to: str, subject: str, text: str, key: str) -> str:
        if not self.available:
            raise ChannelError("email is not configured (FHIRHUB_SMTP_HOST)", transient=False)
        msg = EmailMessage()
        msg["From"] = self.settings.smtp_from
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = "<" + key.replace(":", ".") + "@fhirhub>"
        msg.set_content(text)
        await asyncio.to_thread(self._send, msg)
        return str(msg["Message-ID"])

    def _send(self, msg: EmailMessage) -> None:
        s = self.settings
        assert s.smtp_host
        try:
            with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=30) as smtp:
                if s.smtp_starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if s.smtp_username:
                    smtp.login(s.smtp_username, s.smtp_password or "")
                smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused:
            raise ChannelError("the SMTP server refused the recipient", transient=False) from None
        except smtplib.SMTPResponseException as exc:
            raise ChannelError(f"SMTP error {exc.smtp_code}", transient=exc.smtp_code < 500) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise ChannelError(f"SMTP server unreachable ({type(exc).__name__})", transient=True) from None


class SmsChannel:
    """POST ``{"to", "from", "body", "reference"}`` as JSON to ``FHIRHUB_SMS_URL`` (bearer ``FHIRHUB_SMS_TOKEN``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def available(self) -> bool:
        return bool(self.settings.sms_url)

    async def send(self, to: str, text: str, key: str, reference: str) -> str:
        s = self.settings
        if not s.sms_url:
            raise ChannelError("SMS is not configured (FHIRHUB_SMS_URL)", transient=False)
        headers = {"Idempotency-Key": key}
        if s.sms_token:
            headers["Authorization"] = f"Bearer {s.sms_token}"
        body = {"to": to, "from": s.sms_from, "body": text, "reference": reference}
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                resp = await client.post(s.sms_url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise ChannelError(f"SMS provider unreachable ({type(exc).__name__})", transient=True) from None
        if resp.status_code >= 300:
            transient = resp.status_code >= 500 or resp.status_code in (408, 429)
            raise ChannelError(f"SMS provider answered {resp.status_code}", transient=transient)
        try:
            return str(resp.json().get("id") or key)
        except ValueError:
            return key

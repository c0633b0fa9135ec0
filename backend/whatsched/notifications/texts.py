"""Every user-facing notification text (type, title, message) the Python code inserts into
public.notifications, in the guide's language, referenced by name.

(The dispatcher's notifications — message sent, partly sent, not sent, WhatsApp disconnected
while messages wait — are composed in SQL in whatsched.dispatcher.notify.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NotificationType = Literal["success", "error", "warning", "info"]


@dataclass(frozen=True)
class NotificationText:
    type: NotificationType
    title: str
    message: str


# POST /api/messages/{id}/schedule while the WhatsApp bridge is not connected.
SCHEDULED_WHILE_DISCONNECTED = NotificationText(
    type="warning",
    title="WhatsApp desconectado",
    message="El mensaje quedó programado, pero WhatsApp no está conectado: conéctalo antes de la hora de envío.",
)

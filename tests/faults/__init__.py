"""Fault injection against the real processes: servers killed, stopped, frozen and emptied while
collectors keep sampling; nothing may be lost, stored twice or notified twice."""

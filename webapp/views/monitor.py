"""The Mail Sender window's Monitor section and alert banner, with Remove and Requeue, and Send
again and Mark as sent for the messages held for review.

Both are partials that the window includes (through the template globals below) and that
these routes return alone for htmx; both poll.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from flask import Blueprint, current_app, flash, g, redirect, render_template, request, url_for
from flask_login import current_user

from scheduler import message_actions
from scheduler.monitor import definitions as monitor

from ..authn import admin_required
from ..core.states import HELD
from ..web import id_arg, id_list, is_htmx
from .polling import age_step, polled, tag_of

bp = Blueprint("monitor", __name__, url_prefix="/admin/mail-sender/monitor")

POLL_SECONDS = 5
# A partial refreshes the banner at once when an action changed the queue.
CHANGED_EVENT = "monitor-changed"


@dataclass
class MonitorSection:
    """What _monitor.html shows: the figures, the selection kept across polls, and an action's outcome."""

    seen: monitor.Overview
    selected: set[int] = field(default_factory=set)
    outcomes: list[message_actions.Outcome] | None = None
    after: int | None = None
    poll_seconds: int = POLL_SECONDS
    reason_text: dict = field(default_factory=lambda: monitor.REASON_TEXT)

    @property
    def tag(self) -> str:
        """The tag of what the section shows (polling.py): its figures, ages as shown."""
        seen = self.seen
        return tag_of(banner_figures(seen), seen.sleep_minutes, seen.last_run_at, seen.last_run_node,
                      age_step(seen.oldest_pending_seconds), seen.next_after, self.after, sorted(self.selected),
                      [(m.id, m.status, m.reason, m.last_error, m.subject, m.to, m.attempt_count, m.notified,
                        age_step(m.age_seconds)) for m in seen.stuck],
                      [(o.id, o.ok, o.message) for o in self.outcomes or []],
                      [(n.id, n.email, n.webhook) for n in seen.notifications])

    @property
    def any_held(self) -> bool:
        """Whether the page lists a held message: only then does it offer Send again and Mark as sent."""
        return any(m.status == HELD for m in self.seen.stuck)

    @property
    def refused(self) -> list[message_actions.Outcome]:
        return [o for o in self.outcomes or [] if not o.ok]

    @property
    def done(self) -> list[message_actions.Outcome]:
        return [o for o in self.outcomes or [] if o.ok]


def _counts() -> monitor.QueueCounts:
    """The queue's counts, once a request: the page shows them in the banner and the section."""
    if "queue_counts" not in g:
        g.queue_counts = monitor.queue_counts(current_user.partition_id)
    return g.queue_counts


def monitor_section(selected=(), outcomes=None, after=None) -> MonitorSection:
    """The section for the current administrator's partition (also a template global for the page)."""
    seen = monitor.overview(current_user.partition_id, limit=current_app.config["PAGE_SIZE"], after_id=after,
                            counts=_counts())
    return MonitorSection(seen=seen, selected=set(selected), outcomes=outcomes, after=after)


def monitor_banner() -> monitor.Overview:
    return monitor.overview(current_user.partition_id, limit=0, counts=_counts())


def banner_figures(seen: monitor.Overview) -> tuple:
    """What the banner shows of the figures."""
    return (seen.enabled, seen.alert_active, seen.above_threshold, seen.pending, seen.threshold, seen.stuck_count,
            seen.notify_error, seen.counts_exact, seen.counted_at)


def banner_tag(seen: monitor.Overview) -> str:
    return tag_of(banner_figures(seen))


@bp.record_once
def _template_globals(state):
    state.app.add_template_global(monitor_section, "monitor_section")
    state.app.add_template_global(monitor_banner, "monitor_banner")
    state.app.add_template_global(banner_tag, "monitor_banner_tag")


@bp.get("")
@admin_required
def section():
    if not is_htmx():
        return redirect(url_for("mailsender.index") + "#monitor")
    chosen = monitor_section(id_list(request.args.getlist("id")), after=id_arg("after"))
    return polled(chosen.tag, lambda: render_template("mailsender/_monitor.html", monitor=chosen))


@bp.get("/banner")
@admin_required
def banner():
    if not is_htmx():
        return redirect(url_for("mailsender.index"))
    seen = monitor_banner()
    return polled(banner_tag(seen), lambda: render_template("mailsender/_monitor_banner.html", banner=seen))


@bp.post("/remove")
@admin_required
def remove():
    return _act(message_actions.REMOVE)


@bp.post("/requeue")
@admin_required
def requeue():
    return _act(message_actions.REQUEUE)


@bp.post("/send-again")
@admin_required
def send_again():
    return _act(message_actions.SEND_AGAIN)


@bp.post("/mark-sent")
@admin_required
def mark_sent():
    return _act(message_actions.MARK_SENT)


def _act(action: str):
    ids = id_list(request.form.getlist("id"))
    if not ids:
        outcomes = [message_actions.Outcome("", False, 422, "Select at least one message first.")]
        status = 422
    else:
        outcomes = message_actions.act_on(current_user, current_user.partition_id, action, ids)
        status = 200 if all(o.ok for o in outcomes) else (409 if any(o.status == 409 for o in outcomes) else 404)
    if not is_htmx():
        for outcome in outcomes:
            flash(outcome.message)
        return redirect(url_for("mailsender.index") + "#monitor")
    kept = [o.id for o in outcomes if not o.ok and isinstance(o.id, int)]
    chosen = monitor_section(kept, outcomes, after=id_arg("after"))
    return (render_template("mailsender/_monitor.html", monitor=chosen), status,
            {"HX-Trigger": CHANGED_EVENT})

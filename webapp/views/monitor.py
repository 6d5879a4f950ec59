"""The Mail Sender window's Monitor section and alert banner, with Remove and Requeue, and Send
again and Mark as sent for the messages held for review; and the failed and removed messages,
with Requeue.

Both are partials that the window includes (through the template globals below) and that
these routes return alone for htmx; both poll. What the section shows besides the figures
rides on each poll (its hx-include): the ticked messages (`id`), an action's result, signed so
that only the server's own words are shown (`result`), and a removal waiting for its
confirmation (`confirm_id`). So the result stays until it is dismissed or another action
replaces it, and a poll leaves the confirmation open.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from flask import Blueprint, current_app, flash, g, redirect, render_template, request, url_for
from flask_login import current_user
from itsdangerous import BadSignature, URLSafeSerializer

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


# The lists whose page "Select all" ticks.
STUCK_LIST = "stuck"
ENDED_LIST = "ended"


@dataclass
class MonitorSection:
    """What _monitor.html shows: the figures, the selection kept across polls, an action's
    outcome (kept across polls as `result`), and a removal waiting for its confirmation."""

    seen: monitor.Overview
    selected: set[int] = field(default_factory=set)
    outcomes: list[message_actions.Outcome] | None = None
    after: int | None = None
    ended_before: int | None = None
    confirming: list[int] = field(default_factory=list)
    # Set in the answer to the action itself, not on a poll: only then does focus move.
    just_acted: bool = False
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
                      [(m.id, m.status, m.finished_at, m.last_error, m.subject, m.to) for m in seen.ended],
                      seen.ended_next_before, self.ended_before, self.confirming,
                      [(o.id, o.ok, o.message) for o in self.outcomes or []],
                      [(n.id, n.email, n.webhook) for n in seen.notifications],
                      (seen.last_purge.at, seen.last_purge.node, seen.last_purge.counts) if seen.last_purge else None)

    @property
    def result(self) -> str | None:
        """The outcomes as the section carries them across polls, signed; None without any."""
        return _results().dumps([[o.id, o.ok, o.status, o.message] for o in self.outcomes]) if self.outcomes else None

    @property
    def paged(self) -> bool:
        """Whether the stuck list has more than this page: "Select all" then says it is this page's."""
        return self.after is not None or self.seen.next_after is not None

    @property
    def ended_paged(self) -> bool:
        return self.ended_before is not None or self.seen.ended_next_before is not None

    @property
    def all_stuck_selected(self) -> bool:
        return bool(self.seen.stuck) and all(m.id in self.selected for m in self.seen.stuck)

    @property
    def all_ended_selected(self) -> bool:
        return bool(self.seen.ended) and all(m.id in self.selected for m in self.seen.ended)

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


def _results() -> URLSafeSerializer:
    return URLSafeSerializer(current_app.secret_key, salt="monitor-result")


def carried_outcomes(token: str | None) -> list[message_actions.Outcome] | None:
    """The outcomes a poll carries back (MonitorSection.result); None for none or a forged one."""
    if not token:
        return None
    try:
        return [message_actions.Outcome(*fields) for fields in _results().loads(token)]
    except (BadSignature, TypeError, ValueError):
        return None


def monitor_section(selected=(), outcomes=None, after=None, ended_before=None, confirming=(),
                    just_acted=False) -> MonitorSection:
    """The section for the current administrator's partition (also a template global for the page)."""
    page_size = current_app.config["PAGE_SIZE"]
    seen = monitor.overview(current_user.partition_id, limit=page_size, after_id=after, counts=_counts(),
                            ended_limit=page_size, ended_before=ended_before)
    return MonitorSection(seen=seen, selected=set(selected), outcomes=outcomes, after=after,
                          ended_before=ended_before, confirming=list(confirming), just_acted=just_acted)


def _requested_section(**changes) -> MonitorSection:
    """The section as the request's carried state asks for it (see the module's docstring), and
    with a list's page ticked or cleared for "Select all"."""
    chosen = monitor_section(id_list(request.values.getlist("id")),
                             carried_outcomes(request.values.get("result")), after=id_arg("after"),
                             ended_before=id_arg("ended_before"),
                             confirming=id_list(request.values.getlist("confirm_id")), **changes)
    for name, listed in ((STUCK_LIST, chosen.seen.stuck), (ENDED_LIST, chosen.seen.ended)):
        if request.args.get("select") == name:
            chosen.selected |= {m.id for m in listed}
        elif request.args.get("clear") == name:
            chosen.selected -= {m.id for m in listed}
    return chosen


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
    chosen = _requested_section()
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
    """Removes the ticked messages once the removal is confirmed (`confirmed`); before, asks."""
    if request.form.get("confirmed") == "yes":
        return _act(message_actions.REMOVE)
    ids = _chosen_ids()
    if not ids:
        return _nothing_chosen()
    found = message_actions.found_in_partition(current_user.partition_id, ids)
    if len(found) < len(ids):
        return _answer([message_actions.Outcome(i, False, 404, "No such message.") for i in ids if i not in found],
                       404)
    if not is_htmx():
        return render_template("mailsender/confirm_remove.html", ids=ids,
                               after=id_arg("after"), ended_before=id_arg("ended_before"))
    chosen = monitor_section(ids, after=id_arg("after"), ended_before=id_arg("ended_before"), confirming=ids,
                             just_acted=True)
    return render_template("mailsender/_monitor.html", monitor=chosen)


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


def _chosen_ids() -> list[int]:
    """The messages an action is for: the one a row's own button names (?id=), else the ticked ones."""
    return id_list(request.args.getlist("id")) or id_list(request.form.getlist("id"))


NOTHING_CHOSEN = "Select at least one message first."


def _nothing_chosen():
    outcomes = [message_actions.Outcome("", False, 422, NOTHING_CHOSEN)]
    return _answer(outcomes, 422)


def _act(action: str):
    ids = _chosen_ids()
    if not ids:
        return _nothing_chosen()
    outcomes = message_actions.act_on(current_user, current_user.partition_id, action, ids)
    status = 200 if all(o.ok for o in outcomes) else (409 if any(o.status == 409 for o in outcomes) else 404)
    return _answer(outcomes, status)


def _answer(outcomes: list[message_actions.Outcome], status: int):
    if not is_htmx():
        for outcome in outcomes:
            flash(outcome.message)
        return redirect(url_for("mailsender.index") + "#monitor")
    kept = [o.id for o in outcomes if not o.ok and isinstance(o.id, int)]
    chosen = monitor_section(kept, outcomes, after=id_arg("after"), ended_before=id_arg("ended_before"),
                             just_acted=True)
    return (render_template("mailsender/_monitor.html", monitor=chosen), status,
            {"HX-Trigger": CHANGED_EVENT})

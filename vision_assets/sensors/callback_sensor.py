"""Delivers finished-image messages from the outbox to the configured webhook; failures are retried later and shown
on the image's batch in the UI."""

from datetime import UTC, datetime, timedelta

import dagster as dg

from ..keys import SOURCE_IMAGES
from ..resources import CallbackSettings, ImageStore
from ..vision.callback import RESEND_COMMAND, CallbackRefused, Outbox, deliver, pin_destination
from .outages import outages_skip_the_tick

FAILURES_BEFORE_GIVING_UP_THE_TICK = 3  # a receiver that is down should not hold the sensor for every message


def _observation(entry, outcome: str, **extra) -> dg.AssetObservation:
    return dg.AssetObservation(
        asset_key=SOURCE_IMAGES,
        partition=entry.message.batch,  # None for messages written before batches
        metadata={"image": entry.message.image_id, "callback": outcome, "callback_status": entry.message.status, "attempts": entry.attempts,
                  "idempotency_key": entry.message.idempotency_key, **extra},
    )


@dg.sensor(name="callback_sensor", minimum_interval_seconds=10, default_status=dg.DefaultSensorStatus.RUNNING,
           description="POSTs a signed JSON message to VISION_ASSETS_CALLBACK_URL for every finished image, at least "
           "once; undelivered messages stay in the outbox and are retried with exponential backoff, up to "
           "VISION_ASSETS_CALLBACK_MAX_ATTEMPTS, then wait in the dead letters for `vision-assets callbacks resend`.")
@outages_skip_the_tick
def callback_sensor(context: dg.SensorEvaluationContext, image_store: ImageStore, callback: CallbackSettings):
    if not callback.enabled:
        return dg.SkipReason("no VISION_ASSETS_CALLBACK_URL configured")
    try:  # resolved and checked once per tick; every delivery of the tick connects to that address
        destination = pin_destination(callback.url, callback.allow_private)
    except CallbackRefused as refused:
        return dg.SkipReason(f"callback refused: {refused}")
    outbox = Outbox(image_store.results)
    now = datetime.now(UTC)
    scan = outbox.scan()
    if scan.quarantined:
        context.log.warning(scan.describe_quarantined())
    due = [entry for entry in scan.pending if entry.next_attempt_at <= now][: callback.max_per_tick]
    events, sent, failures = [], 0, 0
    for entry in due:
        error = deliver(entry, destination, callback.secret or "", callback.timeout_seconds)
        if error is None:
            outbox.delivered(entry)
            events.append(_observation(entry, "delivered"))
            sent += 1
            continue
        retry, given_up = outbox.failed(entry, error, now, timedelta(seconds=callback.base_backoff_seconds),
                                        callback.max_attempts)
        if given_up:
            events.append(_observation(retry, "given up: a dead letter", error=error, resend=RESEND_COMMAND))
            context.log.warning(f"callback for {entry.message.image_id} given up after {retry.attempts} attempts "
                                f"({error}); it waits in the dead letters: `{RESEND_COMMAND} "
                                f"{entry.message.idempotency_key}` (or `--all`) sends it again")
        else:
            events.append(_observation(retry, "failed, will retry", error=error,
                                       next_attempt_at=retry.next_attempt_at.isoformat()))
        failures += 1
        if failures >= FAILURES_BEFORE_GIVING_UP_THE_TICK:
            break
    if not events:
        return dg.SkipReason("no messages due" + (f"; {scan.describe_quarantined()}" if scan.quarantined else ""))
    context.log.info(f"callbacks: {sent} delivered, {failures} failed (retried later)")
    return dg.SensorResult(asset_events=events)

"""TriggerService: proto ⇄ domain for triggers, their fires and signed webhook deliveries."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from google.protobuf import empty_pb2
from roz.v1 import triggers_pb2 as pb
from roz.v1 import triggers_pb2_grpc

from gateway.rest.options import RestMethodOptions
from server.api.convert import datetime_of, duration, parse_id, timedelta_of, timestamp
from server.api.principal import current_principal
from server.domain.errors import FailedPrecondition, FieldViolation, InvalidArgument
from server.domain.schedules import (
    DEFAULT_CATCHUP_WINDOW,
    DEFAULT_MAX_CATCHUP_RUNS,
    DEFAULT_MISFIRE_POLICY,
    MAX_PREVIEW,
    MisfirePolicy,
    Schedule,
)
from server.domain.triggers import (
    UPDATABLE,
    WEBHOOK_HEADERS,
    EventDraft,
    FireOutcome,
    FireSource,
    Trigger,
    TriggerDraft,
    TriggerFields,
    TriggerFire,
    TriggerKind,
    check_overlap,
    verify_delivery,
)
from server.domain.update_masks import merge_masked, parse_update_mask
from server.storage.triggers import TriggerRepository

DEFAULT_PREVIEW = 5
TRIGGER_DISABLED = "TRIGGER_DISABLED"

_POLICY_TO_PROTO = {
    MisfirePolicy.SKIP: pb.Schedule.MISFIRE_POLICY_SKIP,
    MisfirePolicy.RUN_LATEST: pb.Schedule.MISFIRE_POLICY_RUN_LATEST,
    MisfirePolicy.RUN_ALL: pb.Schedule.MISFIRE_POLICY_RUN_ALL,
}
_POLICY_FROM_PROTO = {value: policy for policy, value in _POLICY_TO_PROTO.items()}
_SOURCE_TO_PROTO = {
    FireSource.SCHEDULE: pb.TriggerFire.SOURCE_SCHEDULE,
    FireSource.WEBHOOK: pb.TriggerFire.SOURCE_WEBHOOK,
    FireSource.EVENT: pb.TriggerFire.SOURCE_EVENT,
}
_OUTCOME_TO_PROTO = {
    FireOutcome.CREATED: pb.TriggerFire.OUTCOME_CREATED,
    FireOutcome.MISSED: pb.TriggerFire.OUTCOME_MISSED,
    FireOutcome.FAILED: pb.TriggerFire.OUTCOME_FAILED,
    FireOutcome.SUPPRESSED: pb.TriggerFire.OUTCOME_SUPPRESSED,
}


def trigger_to_proto(trigger: Trigger, webhook_base: str) -> pb.Trigger:
    message = pb.Trigger(
        id=str(trigger.id),
        name=trigger.name,
        environment_id=str(trigger.environment_id),
        task_prompt=trigger.task_prompt,
        enabled=trigger.enabled,
        next_fire_time=timestamp(trigger.next_fire_time),
        last_fire_time=timestamp(trigger.last_fire_time),
        create_time=timestamp(trigger.create_time),
        update_time=timestamp(trigger.update_time),
        host_id=str(trigger.host_id or ""),
        task_timeout=duration(trigger.task_timeout),
    )
    if trigger.schedule is not None:
        schedule = trigger.schedule
        message.schedule.CopyFrom(
            pb.Schedule(
                cron=schedule.cron,
                time_zone=schedule.time_zone,
                misfire_policy=_POLICY_TO_PROTO[schedule.misfire_policy],
                catchup_window=duration(schedule.catchup_window),
                max_catchup_runs=schedule.max_catchup_runs,
                description=schedule.explain(),
            )
        )
    elif trigger.event is not None:
        message.event.CopyFrom(
            pb.Event(
                type=trigger.event.type.value,
                states=trigger.event.states,
                host_id=str(trigger.event.host_id or ""),
            )
        )
    else:
        message.webhook.CopyFrom(
            pb.Webhook(
                secret=trigger.webhook_secret or "",
                url=f"{webhook_base}/api/v1/triggers/{trigger.id}/webhook",
                previous_secret_expire_time=timestamp(trigger.previous_secret_expire_time),
            )
        )
    return message


def fire_to_proto(fire: TriggerFire) -> pb.TriggerFire:
    return pb.TriggerFire(
        id=str(fire.id),
        trigger_id=str(fire.trigger_id),
        source=_SOURCE_TO_PROTO[fire.source],
        outcome=_OUTCOME_TO_PROTO[fire.outcome],
        scheduled_time=timestamp(fire.scheduled_time),
        fire_time=timestamp(fire.create_time),
        task_id=str(fire.task_id or ""),
        error=fire.error,
        webhook_id=fire.webhook_id or "",
        event_type=fire.event_type or "",
        event_subject_id=str(fire.event_subject_id or ""),
        event_state=fire.event_state or "",
        missed_count=fire.missed_count,
        first_missed_time=timestamp(fire.first_missed_time),
        last_missed_time=timestamp(fire.last_missed_time),
    )


def draft_from_proto(message: pb.Trigger, field: str = "trigger") -> TriggerDraft:
    schedule = None
    if message.HasField("schedule"):
        given = message.schedule
        if given.misfire_policy == pb.Schedule.MISFIRE_POLICY_UNSPECIFIED:
            policy = DEFAULT_MISFIRE_POLICY
        elif given.misfire_policy in _POLICY_FROM_PROTO:
            policy = _POLICY_FROM_PROTO[given.misfire_policy]
        else:
            raise InvalidArgument(
                "the trigger is not valid",
                [
                    FieldViolation(
                        f"{field}.schedule.misfire_policy", f"unknown policy {given.misfire_policy}"
                    )
                ],
            )
        window = f"{field}.schedule.catchup_window"
        schedule = Schedule(
            cron=given.cron,
            time_zone=given.time_zone,
            misfire_policy=policy,
            catchup_window=timedelta_of(given.catchup_window, window)
            if given.HasField("catchup_window")
            else DEFAULT_CATCHUP_WINDOW,
            max_catchup_runs=given.max_catchup_runs or DEFAULT_MAX_CATCHUP_RUNS,
        )
    event = None
    if message.HasField("event"):
        event = EventDraft(
            type=message.event.type,
            states=tuple(message.event.states),
            host_id=message.event.host_id,
        )
    return TriggerDraft(
        name=message.name,
        environment_id=message.environment_id,
        task_prompt=message.task_prompt,
        host_id=message.host_id,
        task_timeout=timedelta_of(message.task_timeout, f"{field}.task_timeout")
        if message.HasField("task_timeout")
        else None,
        enabled=message.enabled if message.HasField("enabled") else True,
        schedule=schedule,
        webhook=message.HasField("webhook"),
        event=event,
    )


class TriggerServicer(triggers_pb2_grpc.TriggerServiceServicer):  # type: ignore[misc]
    """`webhook_base` is the server's public URL, for the URL each webhook trigger shows."""

    def __init__(
        self,
        repository: Callable[[], TriggerRepository],
        *,
        clock: Callable[[], datetime],
        webhook_base: str,
    ) -> None:
        self._repository = repository
        self._clock = clock
        self._webhook_base = webhook_base.rstrip("/")

    def _out(self, trigger: Trigger) -> pb.Trigger:
        return trigger_to_proto(trigger, self._webhook_base)

    async def CreateTrigger(self, request: pb.CreateTriggerRequest, context: Any) -> pb.Trigger:
        tenant = current_principal().tenant_id
        fields = draft_from_proto(request.trigger).validate()
        created = await self._repository().create(tenant, fields, self._clock())
        return self._out(created)

    async def GetTrigger(self, request: pb.GetTriggerRequest, context: Any) -> pb.Trigger:
        tenant = current_principal().tenant_id
        return self._out(await self._repository().get(tenant, parse_id(request.id)))

    async def ListTriggers(
        self, request: pb.ListTriggersRequest, context: Any
    ) -> pb.ListTriggersResponse:
        tenant = current_principal().tenant_id
        page = await self._repository().list(
            tenant, page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListTriggersResponse(
            triggers=[self._out(item) for item in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateTrigger(self, request: pb.UpdateTriggerRequest, context: Any) -> pb.Trigger:
        tenant = current_principal().tenant_id
        trigger_id = parse_id(request.id)
        if request.trigger.id and request.trigger.id != request.id:
            raise InvalidArgument(
                "the trigger's id differs from the id in the request",
                [FieldViolation("trigger.id", "must be empty or equal to id")],
            )
        mask = parse_update_mask(
            request.update_mask.paths if request.HasField("update_mask") else (),
            UPDATABLE,
            note="(a trigger's kind never changes; rotate a webhook's secret with"
            " RotateWebhookSecret)",
        )
        changes = draft_from_proto(request.trigger)

        def change(current: Trigger) -> TriggerFields:
            if mask is None:
                draft = changes
                if current.kind is TriggerKind.WEBHOOK and not request.trigger.HasField("webhook"):
                    # A webhook has nothing to replace: its condition stays as it is.
                    draft = replace(changes, webhook=True)
                return draft.validate()
            names = set(mask)
            if "schedule" in names and current.kind is not TriggerKind.SCHEDULE:
                raise _not_its_condition(current, "schedule")
            if "event" in names and current.kind is not TriggerKind.EVENT:
                raise _not_its_condition(current, "event")
            return merge_masked(changes, current.draft(), names, UPDATABLE).validate()

        updated = await self._repository().update(tenant, trigger_id, change, self._clock())
        return self._out(updated)

    async def DeleteTrigger(
        self, request: pb.DeleteTriggerRequest, context: Any
    ) -> empty_pb2.Empty:
        tenant = current_principal().tenant_id
        await self._repository().delete(tenant, parse_id(request.id))
        return empty_pb2.Empty()

    async def PreviewTrigger(
        self, request: pb.PreviewTriggerRequest, context: Any
    ) -> pb.PreviewTriggerResponse:
        tenant = current_principal().tenant_id
        count = request.count or DEFAULT_PREVIEW
        if not 1 <= count <= MAX_PREVIEW:
            raise InvalidArgument(
                "the preview is not valid",
                [FieldViolation("count", f"count must be between 1 and {MAX_PREVIEW}")],
            )
        after = datetime_of(request.after, "after") if request.HasField("after") else self._clock()
        trigger = await self._repository().get(tenant, parse_id(request.id))
        if trigger.schedule is None:
            raise FailedPrecondition(
                f"a {trigger.kind.value} trigger has no schedule to preview",
                reason="TRIGGER_NOT_SCHEDULED",
                metadata={"trigger_id": str(trigger.id)},
            )
        zone = trigger.schedule.zone
        return pb.PreviewTriggerResponse(
            fires=[
                pb.ScheduledFire(
                    fire_time=timestamp(moment), local_time=moment.astimezone(zone).isoformat()
                )
                for moment in trigger.schedule.preview(after, count)
            ]
        )

    async def ListTriggerFires(
        self, request: pb.ListTriggerFiresRequest, context: Any
    ) -> pb.ListTriggerFiresResponse:
        tenant = current_principal().tenant_id
        page = await self._repository().fires(
            tenant,
            parse_id(request.trigger_id, "trigger_id"),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListTriggerFiresResponse(
            fires=[fire_to_proto(item) for item in page.items],
            next_page_token=page.next_page_token,
        )

    async def RotateWebhookSecret(
        self, request: pb.RotateWebhookSecretRequest, context: Any
    ) -> pb.Trigger:
        tenant = current_principal().tenant_id
        overlap = check_overlap(
            timedelta_of(request.overlap, "overlap") if request.HasField("overlap") else None
        )
        rotated = await self._repository().rotate_secret(
            tenant, parse_id(request.id), overlap, self._clock()
        )
        return self._out(rotated)

    async def DeliverWebhook(
        self, request: pb.DeliverWebhookRequest, context: Any
    ) -> pb.WebhookReceipt:
        trigger_id = parse_id(request.trigger_id, "trigger_id")
        headers = {
            key: value
            for key, value in context.invocation_metadata() or ()
            if key in WEBHOOK_HEADERS and isinstance(value, str)
        }
        repository = self._repository()
        target = await repository.webhook_target(trigger_id, self._clock())
        # The raw bytes, verified before anything of them is parsed.
        delivery = verify_delivery(request.body.data, headers, target.secrets, self._clock())
        if not target.enabled:
            raise FailedPrecondition(
                "the trigger is disabled",
                reason=TRIGGER_DISABLED,
                metadata={"trigger_id": str(trigger_id)},
            )
        fire, duplicate = await repository.deliver(
            target.tenant_id, trigger_id, delivery, self._clock()
        )
        return pb.WebhookReceipt(fire=fire_to_proto(fire), duplicate=duplicate)


def _not_its_condition(current: Trigger, named: str) -> InvalidArgument:
    return InvalidArgument(
        "a trigger's kind never changes",
        [
            FieldViolation(
                "update_mask",
                f"{named!r}: this is a {current.kind.value} trigger, not a {named} one",
            )
        ],
    )


def rest_options() -> dict[str, RestMethodOptions]:
    """The webhook route hands the servicer its Standard Webhooks headers."""
    return {
        "/roz.v1.TriggerService/DeliverWebhook": RestMethodOptions(
            forward_headers=tuple(name.encode("ascii") for name in WEBHOOK_HEADERS)
        )
    }

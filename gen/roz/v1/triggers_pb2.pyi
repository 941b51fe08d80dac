import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import httpbody_pb2 as _httpbody_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from roz.v1 import access_pb2 as _access_pb2
from transcoding.v1 import annotations_pb2 as _annotations_pb2_1
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Trigger(_message.Message):
    __slots__ = ("id", "name", "environment_id", "task_prompt", "enabled", "schedule", "webhook", "event", "next_fire_time", "last_fire_time", "create_time", "update_time", "host_id", "task_timeout")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_PROMPT_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_FIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    environment_id: str
    task_prompt: str
    enabled: bool
    schedule: Schedule
    webhook: Webhook
    event: Event
    next_fire_time: _timestamp_pb2.Timestamp
    last_fire_time: _timestamp_pb2.Timestamp
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    host_id: str
    task_timeout: _duration_pb2.Duration
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., environment_id: _Optional[str] = ..., task_prompt: _Optional[str] = ..., enabled: _Optional[bool] = ..., schedule: _Optional[_Union[Schedule, _Mapping]] = ..., webhook: _Optional[_Union[Webhook, _Mapping]] = ..., event: _Optional[_Union[Event, _Mapping]] = ..., next_fire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_fire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., host_id: _Optional[str] = ..., task_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Schedule(_message.Message):
    __slots__ = ("cron", "time_zone", "misfire_policy", "catchup_window", "max_catchup_runs", "description")
    class MisfirePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        MISFIRE_POLICY_UNSPECIFIED: _ClassVar[Schedule.MisfirePolicy]
        MISFIRE_POLICY_SKIP: _ClassVar[Schedule.MisfirePolicy]
        MISFIRE_POLICY_RUN_LATEST: _ClassVar[Schedule.MisfirePolicy]
        MISFIRE_POLICY_RUN_ALL: _ClassVar[Schedule.MisfirePolicy]
    MISFIRE_POLICY_UNSPECIFIED: Schedule.MisfirePolicy
    MISFIRE_POLICY_SKIP: Schedule.MisfirePolicy
    MISFIRE_POLICY_RUN_LATEST: Schedule.MisfirePolicy
    MISFIRE_POLICY_RUN_ALL: Schedule.MisfirePolicy
    CRON_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    MISFIRE_POLICY_FIELD_NUMBER: _ClassVar[int]
    CATCHUP_WINDOW_FIELD_NUMBER: _ClassVar[int]
    MAX_CATCHUP_RUNS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    cron: str
    time_zone: str
    misfire_policy: Schedule.MisfirePolicy
    catchup_window: _duration_pb2.Duration
    max_catchup_runs: int
    description: str
    def __init__(self, cron: _Optional[str] = ..., time_zone: _Optional[str] = ..., misfire_policy: _Optional[_Union[Schedule.MisfirePolicy, str]] = ..., catchup_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_catchup_runs: _Optional[int] = ..., description: _Optional[str] = ...) -> None: ...

class Webhook(_message.Message):
    __slots__ = ("secret", "url", "previous_secret_expire_time")
    SECRET_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SECRET_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    secret: str
    url: str
    previous_secret_expire_time: _timestamp_pb2.Timestamp
    def __init__(self, secret: _Optional[str] = ..., url: _Optional[str] = ..., previous_secret_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("type", "states", "host_id")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    type: str
    states: _containers.RepeatedScalarFieldContainer[str]
    host_id: str
    def __init__(self, type: _Optional[str] = ..., states: _Optional[_Iterable[str]] = ..., host_id: _Optional[str] = ...) -> None: ...

class TriggerFire(_message.Message):
    __slots__ = ("id", "trigger_id", "source", "outcome", "scheduled_time", "fire_time", "task_id", "error", "webhook_id", "event_type", "event_subject_id", "event_state", "missed_count", "first_missed_time", "last_missed_time")
    class Source(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SOURCE_UNSPECIFIED: _ClassVar[TriggerFire.Source]
        SOURCE_SCHEDULE: _ClassVar[TriggerFire.Source]
        SOURCE_WEBHOOK: _ClassVar[TriggerFire.Source]
        SOURCE_EVENT: _ClassVar[TriggerFire.Source]
    SOURCE_UNSPECIFIED: TriggerFire.Source
    SOURCE_SCHEDULE: TriggerFire.Source
    SOURCE_WEBHOOK: TriggerFire.Source
    SOURCE_EVENT: TriggerFire.Source
    class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OUTCOME_UNSPECIFIED: _ClassVar[TriggerFire.Outcome]
        OUTCOME_CREATED: _ClassVar[TriggerFire.Outcome]
        OUTCOME_MISSED: _ClassVar[TriggerFire.Outcome]
        OUTCOME_FAILED: _ClassVar[TriggerFire.Outcome]
        OUTCOME_SUPPRESSED: _ClassVar[TriggerFire.Outcome]
    OUTCOME_UNSPECIFIED: TriggerFire.Outcome
    OUTCOME_CREATED: TriggerFire.Outcome
    OUTCOME_MISSED: TriggerFire.Outcome
    OUTCOME_FAILED: TriggerFire.Outcome
    OUTCOME_SUPPRESSED: TriggerFire.Outcome
    ID_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_TIME_FIELD_NUMBER: _ClassVar[int]
    FIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    EVENT_SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_STATE_FIELD_NUMBER: _ClassVar[int]
    MISSED_COUNT_FIELD_NUMBER: _ClassVar[int]
    FIRST_MISSED_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_MISSED_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    trigger_id: str
    source: TriggerFire.Source
    outcome: TriggerFire.Outcome
    scheduled_time: _timestamp_pb2.Timestamp
    fire_time: _timestamp_pb2.Timestamp
    task_id: str
    error: str
    webhook_id: str
    event_type: str
    event_subject_id: str
    event_state: str
    missed_count: int
    first_missed_time: _timestamp_pb2.Timestamp
    last_missed_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., trigger_id: _Optional[str] = ..., source: _Optional[_Union[TriggerFire.Source, str]] = ..., outcome: _Optional[_Union[TriggerFire.Outcome, str]] = ..., scheduled_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., fire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., task_id: _Optional[str] = ..., error: _Optional[str] = ..., webhook_id: _Optional[str] = ..., event_type: _Optional[str] = ..., event_subject_id: _Optional[str] = ..., event_state: _Optional[str] = ..., missed_count: _Optional[int] = ..., first_missed_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_missed_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateTriggerRequest(_message.Message):
    __slots__ = ("trigger",)
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    trigger: Trigger
    def __init__(self, trigger: _Optional[_Union[Trigger, _Mapping]] = ...) -> None: ...

class ListTriggersRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTriggersResponse(_message.Message):
    __slots__ = ("triggers", "next_page_token")
    TRIGGERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    triggers: _containers.RepeatedCompositeFieldContainer[Trigger]
    next_page_token: str
    def __init__(self, triggers: _Optional[_Iterable[_Union[Trigger, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetTriggerRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class UpdateTriggerRequest(_message.Message):
    __slots__ = ("id", "trigger", "update_mask")
    ID_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    id: str
    trigger: Trigger
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, id: _Optional[str] = ..., trigger: _Optional[_Union[Trigger, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class DeleteTriggerRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class PreviewTriggerRequest(_message.Message):
    __slots__ = ("id", "count", "after")
    ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    id: str
    count: int
    after: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., count: _Optional[int] = ..., after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PreviewTriggerResponse(_message.Message):
    __slots__ = ("fires",)
    FIRES_FIELD_NUMBER: _ClassVar[int]
    fires: _containers.RepeatedCompositeFieldContainer[ScheduledFire]
    def __init__(self, fires: _Optional[_Iterable[_Union[ScheduledFire, _Mapping]]] = ...) -> None: ...

class ScheduledFire(_message.Message):
    __slots__ = ("fire_time", "local_time")
    FIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    LOCAL_TIME_FIELD_NUMBER: _ClassVar[int]
    fire_time: _timestamp_pb2.Timestamp
    local_time: str
    def __init__(self, fire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., local_time: _Optional[str] = ...) -> None: ...

class ListTriggerFiresRequest(_message.Message):
    __slots__ = ("trigger_id", "page_size", "page_token")
    TRIGGER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    trigger_id: str
    page_size: int
    page_token: str
    def __init__(self, trigger_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTriggerFiresResponse(_message.Message):
    __slots__ = ("fires", "next_page_token")
    FIRES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    fires: _containers.RepeatedCompositeFieldContainer[TriggerFire]
    next_page_token: str
    def __init__(self, fires: _Optional[_Iterable[_Union[TriggerFire, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RotateWebhookSecretRequest(_message.Message):
    __slots__ = ("id", "overlap")
    ID_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    id: str
    overlap: _duration_pb2.Duration
    def __init__(self, id: _Optional[str] = ..., overlap: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class DeliverWebhookRequest(_message.Message):
    __slots__ = ("trigger_id", "body")
    TRIGGER_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    trigger_id: str
    body: _httpbody_pb2.HttpBody
    def __init__(self, trigger_id: _Optional[str] = ..., body: _Optional[_Union[_httpbody_pb2.HttpBody, _Mapping]] = ...) -> None: ...

class WebhookReceipt(_message.Message):
    __slots__ = ("fire", "duplicate")
    FIRE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    fire: TriggerFire
    duplicate: bool
    def __init__(self, fire: _Optional[_Union[TriggerFire, _Mapping]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

"""ApiKeyService: proto ⇄ domain for API keys; a key never mints one with more power than itself."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from google.protobuf import empty_pb2
from roz.v1 import api_keys_pb2 as pb
from roz.v1 import api_keys_pb2_grpc

from server.api.convert import datetime_of, parse_id, timestamp
from server.api.principal import current_principal
from server.domain.api_keys import ApiKey, check_new_key_mintable, validate_new_key
from server.storage.api_keys import ApiKeyRepository


def api_key_to_proto(key: ApiKey) -> pb.ApiKey:
    return pb.ApiKey(
        id=str(key.id),
        name=key.name,
        key_prefix=key.key_prefix,
        scopes=sorted(key.scopes),
        expire_time=timestamp(key.expire_time),
        create_time=timestamp(key.create_time),
        last_used_time=timestamp(key.last_used_time),
        revoke_time=timestamp(key.revoke_time),
        creator_key_id=str(key.created_by_key_id) if key.created_by_key_id else "",
        host_id=str(key.host_id) if key.host_id else "",
    )


class ApiKeyServicer(api_keys_pb2_grpc.ApiKeyServiceServicer):  # type: ignore[misc]
    def __init__(self, repository: Callable[[], ApiKeyRepository]) -> None:
        self._repository = repository

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: Any
    ) -> pb.CreateApiKeyResponse:
        caller = current_principal()
        wanted = request.api_key
        new = validate_new_key(
            wanted.name,
            wanted.scopes,
            datetime_of(wanted.expire_time, "api_key.expire_time")
            if wanted.HasField("expire_time")
            else None,
            now=datetime.now(UTC),
            host_id=wanted.host_id,
        )
        check_new_key_mintable(caller.scopes, new)
        key, secret = await self._repository().create(
            caller.tenant_id, new, created_by_key_id=caller.key_id
        )
        return pb.CreateApiKeyResponse(api_key=api_key_to_proto(key), secret=secret)

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: Any
    ) -> pb.ListApiKeysResponse:
        tenant = current_principal().tenant_id
        page = await self._repository().list(
            tenant, page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListApiKeysResponse(
            api_keys=[api_key_to_proto(key) for key in page.items],
            next_page_token=page.next_page_token,
        )

    async def GetApiKey(self, request: pb.GetApiKeyRequest, context: Any) -> pb.ApiKey:
        tenant = current_principal().tenant_id
        return api_key_to_proto(await self._repository().get(tenant, parse_id(request.id)))

    async def DeleteApiKey(self, request: pb.DeleteApiKeyRequest, context: Any) -> empty_pb2.Empty:
        tenant = current_principal().tenant_id
        await self._repository().revoke(tenant, parse_id(request.id))
        return empty_pb2.Empty()

    async def GetCaller(self, request: pb.GetCallerRequest, context: Any) -> pb.Caller:
        caller = current_principal()
        repository = self._repository()
        key = await repository.get(caller.tenant_id, caller.key_id)
        return pb.Caller(
            tenant_id=str(caller.tenant_id),
            tenant_name=await repository.tenant_name(caller.tenant_id),
            api_key=api_key_to_proto(key),
        )

    async def DeleteCallerApiKey(
        self, request: pb.DeleteCallerApiKeyRequest, context: Any
    ) -> empty_pb2.Empty:
        caller = current_principal()
        await self._repository().revoke(caller.tenant_id, caller.key_id)
        return empty_pb2.Empty()

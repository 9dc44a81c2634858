"""Channels: the validated settings of one SMPP connector (stored by `carriers`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from amnex.receipts.dlr import ReceiptIdFormat


class SmppConnectorConfig(BaseModel):
    """One carrier's SMPP account: where, who, how many binds, how fast, how to encode."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    # SMPP 3.4 C-octet strings: system_id 16, password 9, system_type 13 octets with the NUL.
    system_id: str = Field(min_length=1, max_length=15)
    password: str = Field("", max_length=8, repr=False)
    system_type: str = Field("", max_length=12)
    bind_type: Literal["transceiver", "transmitter", "receiver"] = "transceiver"
    binds: int = Field(1, ge=1, le=32)
    window: int = Field(50, ge=1, le=1000)
    throughput_per_s: float = Field(0, ge=0, description="0 = unlimited")
    response_timeout_s: float = Field(10.0, gt=0, le=300)
    enquire_link_interval_s: float = Field(30.0, gt=0, le=3600)
    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(60.0, gt=0)
    throttle_backoff_s: float = Field(1.0, gt=0, le=30)
    throttle_retries: int = Field(5, ge=0, le=50)
    split: Literal["udh", "sar"] = "udh"
    allow_latin1: bool = False
    source_ton: int | None = Field(None, ge=0, le=6)
    source_npi: int | None = Field(None, ge=0, le=18)
    dest_ton: int = Field(1, ge=0, le=6)
    dest_npi: int = Field(1, ge=0, le=18)
    registered_delivery: bool = True
    # How this carrier writes message ids in receipts: as submit_sm_resp gave them (leading
    # zeros and case aside), or a hex id in decimal, or a decimal id in hex.
    receipt_id_format: ReceiptIdFormat = "as_is"
    tls: bool = False
    tls_verify: bool = True
    tls_ca_file: str | None = None

    @model_validator(mode="after")
    def _backoff_order(self) -> SmppConnectorConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be at least reconnect_min_s")
        return self

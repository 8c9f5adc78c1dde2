"""The two output tables' Arrow schemas: the single source of truth for column names and types.

Metric columns are named exactly as the API's fields. A channel that lacks a metric leaves
it null (never 0: "not reported" and "zero" differ). Anything the API sends that is not
listed here lands in ``extra_metrics`` (field name -> JSON text of the value), so a new
Braze metric or channel is kept losslessly until the schema learns it.

``date`` is the Hive partition key (``date=YYYY-MM-DD`` directories). It exists in memory
while batches are built and is dropped from the Parquet files themselves, as Hive layout
expects; readers get it back, typed ``date32``, from the path (see :func:`partitioning`).
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa

__all__ = [
    "DATE",
    "EXTRA",
    "STATS_FILE_SCHEMA",
    "STATS_INT_METRICS",
    "STATS_SCHEMA",
    "STATS_STRING_FIELDS",
    "TOTALS_FILE_SCHEMA",
    "TOTALS_INT_METRICS",
    "TOTALS_SCHEMA",
    "partitioning",
]

DATE: Final = "date"
EXTRA: Final = "extra_metrics"

_CONVERSIONS: Final = (
    "conversions",
    "conversions_by_send_time",
    "conversions1",
    "conversions1_by_send_time",
    "conversions2",
    "conversions2_by_send_time",
    "conversions3",
    "conversions3_by_send_time",
)

#: Per channel/variation counts, in the order of BRAZE_API.md's channel table.
STATS_INT_METRICS: Final = (
    # push
    "sent", "delivered", "undelivered", "delivery_failed", "direct_opens", "total_opens",
    "bounces", "body_clicks",
    # email
    "opens", "unique_opens", "clicks", "unique_clicks", "unsubscribes", "reported_spam",
    # sms
    "sent_to_carrier", "rejected", "opt_out", "help",
    # whats_app
    "failed", "read",
    # webhook
    "errors",
    # content cards
    "total_impressions", "unique_impressions", "total_clicks", "total_dismissals",
    "unique_dismissals",
    # in-app messages
    "impressions", "first_button_clicks", "second_button_clicks",
    # every channel, per variation
    "unique_recipients", *_CONVERSIONS, "enrolled",
)  # fmt: skip

STATS_STRING_FIELDS: Final = ("variation_name", "variation_api_id")
STATS_FLOAT_METRICS: Final = ("revenue",)

TOTALS_INT_METRICS: Final = (*_CONVERSIONS, "unique_recipients")
TOTALS_FLOAT_METRICS: Final = ("revenue",)

#: Channels documented in BRAZE_API.md; others are kept and logged once.
KNOWN_CHANNELS: Final = frozenset(
    {
        "ios_push", "android_push", "kindle_push", "web_push", "email", "sms", "whats_app",
        "webhook", "content_cards", "in_app_message", "trigger_in_app_message",
    }
)  # fmt: skip

EXTRA_TYPE: Final = pa.map_(pa.string(), pa.string())
EXPORTED_AT_TYPE: Final = pa.timestamp("us", tz="UTC")

_PAIR_FIELDS: Final = [
    pa.field("campaign_id", pa.string(), nullable=False),
    pa.field("send_id", pa.string(), nullable=False),
]
_RUN_FIELDS: Final = [
    pa.field(EXTRA, EXTRA_TYPE),
    pa.field("exported_at", EXPORTED_AT_TYPE, nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
]

#: send_stats as written to Parquet: one row per (pair, date, channel, variation).
STATS_FILE_SCHEMA: Final = pa.schema(
    [
        *_PAIR_FIELDS,
        pa.field("channel", pa.string(), nullable=False),
        *(pa.field(n, pa.string()) for n in STATS_STRING_FIELDS),
        *(pa.field(n, pa.int64()) for n in STATS_INT_METRICS),
        *(pa.field(n, pa.float64()) for n in STATS_FLOAT_METRICS),
        *_RUN_FIELDS,
    ]
)

#: send_totals as written to Parquet: one row per (pair, date).
TOTALS_FILE_SCHEMA: Final = pa.schema(
    [
        *_PAIR_FIELDS,
        *(pa.field(n, pa.int64()) for n in TOTALS_INT_METRICS),
        *(pa.field(n, pa.float64()) for n in TOTALS_FLOAT_METRICS),
        *_RUN_FIELDS,
    ]
)

_DATE_FIELD: Final = pa.field(DATE, pa.date32(), nullable=False)
#: In-memory batches: the file schema plus the partition column, last.
STATS_SCHEMA: Final = STATS_FILE_SCHEMA.append(_DATE_FIELD)
TOTALS_SCHEMA: Final = TOTALS_FILE_SCHEMA.append(_DATE_FIELD)

TABLES: Final = {"send_stats": STATS_FILE_SCHEMA, "send_totals": TOTALS_FILE_SCHEMA}


def partitioning() -> pa.dataset.Partitioning:
    """Hive partitioning with ``date`` typed as date32, for ``pyarrow.dataset`` readers."""
    import pyarrow.dataset as ds

    return ds.partitioning(pa.schema([_DATE_FIELD]), flavor="hive")

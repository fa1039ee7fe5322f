"""Value types shared by component configs: durations written the collector's way ("200ms", "5s").

The implementation is gotel.config.duration (a leaf module the component base class can import too);
configs import `Duration` from here.
"""

from __future__ import annotations

from gotel.config.duration import (
    ConfigJsonSchema,
    Duration,
    format_duration,
    is_duration_field,
    parse_duration,
)

__all__ = ["ConfigJsonSchema", "Duration", "format_duration", "is_duration_field", "parse_duration"]

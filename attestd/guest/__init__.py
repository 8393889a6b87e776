"""attestd-guest: the in-guest agent that turns injected secrets into mounted LUKS2 volumes.

Standard library only, and nothing imported from the rest of ``attestd``, so the
package can be copied alone (or as a zipapp) into minimal guests.
"""

from __future__ import annotations

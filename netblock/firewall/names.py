"""Every kernel object name netblock creates, in one place.

Anything not named here is not netblock's, and no backend touches it.
"""

NFT_FAMILY = "inet"
NFT_TABLE = "netblock"
NFT_SET = {"ipv4": "block4", "ipv6": "block6"}
NFT_CHAIN = "filter"
# Written into the table's comment so ensure() can tell our table from a stranger's.
NFT_TABLE_COMMENT = "managed by netblock"

IPSET_SET = {"ipv4": "netblock4", "ipv6": "netblock6"}
# The set a change is built in before it is swapped in (ipset has no transactions).
IPSET_SCRATCH = {"ipv4": "netblock4-new", "ipv6": "netblock6-new"}

IPT_CHAIN = "NETBLOCK"
IPT_PARENT = "INPUT"
IPT_COMMENT = "netblock"

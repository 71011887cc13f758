"""The engine: when to refresh, the one refresh, and the one publish path.

``schedule`` (due times, rate limits), ``slots`` (concurrency, earliest expiry first),
``refresher`` (claim → OAuth), ``landing`` (the answer committed, published and
reported), ``pending`` (an answer the store could not take yet),
``publish`` (outputs → hooks, under the token's lease), ``outputs`` (a token's files,
rendered by :mod:`tokend.formats`), ``atomic`` (one file replaced atomically and
durably), ``hooks``, ``supervisor`` (applies a config and runs what is due), ``tracker``
(each token's last record, state and due times), ``batches`` (publishes and retires
batches of tokens under publish leases), ``workers`` (the store's and the outputs'
thread pools), ``metrics``, ``attention`` (what a state asks of a person, and how many
tokens are in each). May
import the store, oauth and config layers and the shared modules; never the daemon or
the CLI.
"""

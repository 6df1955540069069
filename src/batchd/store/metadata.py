"""The metadata store that callers hold: one object with every verb, on SQLite or PostgreSQL.

The verbs live in parts, one per concern, that each hold the same `Database` (store/sql.py):
keys, files, batches (with the verbs that stop one), the worker's fenced verbs, webhooks and
uploads. `MetadataStore` builds the parts and names their verbs, bound here one by one rather
than looked up by name at run time, so that mypy checks every call against the part that
implements it, and this class against the roles its callers expect (store/roles.py).
"""

from __future__ import annotations

from batchd.store.batches import SqlBatches
from batchd.store.files import SqlFiles
from batchd.store.keys import SqlKeys
from batchd.store.sql import Database
from batchd.store.uploads import SqlUploads
from batchd.store.usage import SqlUsage
from batchd.store.webhooks import SqlWebhooks
from batchd.store.work import SqlWork


class MetadataStore:
    """Keys, files, batches, chunks, webhooks and uploads, spoken about in domain verbs."""

    def __init__(self, url: str) -> None:
        self.db = db = Database(url)
        self.postgres = db.postgres
        self.migrate = db.migrate
        self.database_time = db.database_time
        self.ping = db.ping
        self.listen_for_work = db.listen_for_work
        self.close = db.close

        keys = SqlKeys(db)
        self.insert_key = keys.insert_key
        self.find_key = keys.find_key
        self.list_keys = keys.list_keys
        self.revoke_key = keys.revoke_key

        files = SqlFiles(db)
        self.insert_file = files.insert_file
        self.get_file = files.get_file
        self.list_files = files.list_files
        self.delete_file = files.delete_file
        self.deleted_files_unused = files.deleted_files_unused
        self.expire_files = files.expire_files
        self.forget_file = files.forget_file

        batches = SqlBatches(db)
        self.insert_batch = batches.insert_batch
        self.get_batch = batches.get_batch
        self.get_batch_progress = batches.get_batch_progress
        self.list_batches = batches.list_batches
        self.live_progress = batches.live_progress
        self.queue_snapshot = batches.queue_snapshot
        self.recent_chunk_runs = batches.recent_chunk_runs
        self.chunks_done = batches.chunks_done
        self.request_cancel = batches.request_cancel
        self.mark_expired = batches.mark_expired
        self.stop_batch = batches.stop_batch

        work = SqlWork(db)
        self.claim_batch_task = work.claim_batch_task
        self.renew_batch_lease = work.renew_batch_lease
        self.release_batch_lease = work.release_batch_lease
        self.start_batch = work.start_batch
        self.fail_batch = work.fail_batch
        self.finish_batch = work.finish_batch
        self.take_turn = work.take_turn
        self.claim_chunk = work.claim_chunk
        self.heartbeat_chunk = work.heartbeat_chunk
        self.reserve_chunk = work.reserve_chunk
        self.record_deaths = work.record_deaths
        self.record_crash = work.record_crash
        self.checkpoint_chunk = work.checkpoint_chunk
        self.commit_chunk = work.commit_chunk
        self.release_leases_of = work.release_leases_of
        self.get_chunk = work.get_chunk
        self.list_chunks = work.list_chunks

        webhooks = SqlWebhooks(db)
        self.insert_endpoint = webhooks.insert_endpoint
        self.list_endpoints = webhooks.list_endpoints
        self.get_endpoint = webhooks.get_endpoint
        self.update_endpoint = webhooks.update_endpoint
        self.record_test_event = webhooks.record_test_event
        self.claim_deliveries = webhooks.claim_deliveries
        self.finish_attempt = webhooks.finish_attempt
        self.list_deliveries = webhooks.list_deliveries

        usage = SqlUsage(db)
        self.record_usage = usage.record_usage
        self.read_usage = usage.read_usage

        uploads = SqlUploads(db)
        self.insert_upload = uploads.insert_upload
        self.get_upload = uploads.get_upload
        self.add_part = uploads.add_part
        self.part_totals = uploads.part_totals
        self.list_parts = uploads.list_parts
        self.claim_upload = uploads.claim_upload
        self.release_upload = uploads.release_upload
        self.complete_upload = uploads.complete_upload
        self.end_uploads = uploads.end_uploads
        self.expire_uploads = uploads.expire_uploads
        self.forget_parts = uploads.forget_parts

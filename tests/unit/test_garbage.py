import subprocess
import sys
import textwrap


def test_start_up_is_frozen_and_collections_spaced_out_while_cycles_are_still_freed() -> None:
    # In a process of its own: freezing this one would keep every test's objects for good.
    script = textwrap.dedent("""
        import gc, weakref
        from batchd import garbage

        garbage.settle_after_start_up()
        assert gc.get_freeze_count() > 1_000, gc.get_freeze_count()  # modules, classes
        assert gc.get_threshold() == (garbage.YOUNG_THRESHOLD, garbage.OLDER_THRESHOLD,
                                      garbage.OLDER_THRESHOLD)

        class Node:
            pass

        node = Node()
        node.itself = node  # a cycle: reference counting alone never frees it
        gone = weakref.ref(node)
        del node
        kept = [[] for _ in range(garbage.YOUNG_THRESHOLD)]  # enough for a collection
        assert gone() is None
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr

"""A partition big enough is clustered into lists (SEMGATE_INDEX_LISTS_FROM,
src/vindex/vindex.c "lists"): a semantic lookup reads only the
SEMGATE_INDEX_PROBE lists whose centroids are nearest to the question.
Every stored question is still answered by its own entry, near paraphrases
nearly always, new questions still miss, and the lists are built again
when a gateway loads the partition at start. The thresholds are small here;
the same code runs from 8192 entries by default."""
from concurrent.futures import ThreadPoolExecutor


from conftest import metric, user, wait_until

N = 320           # questions stored: clustered from 256 rows into 16 lists
SAMPLE = range(0, N, 8)
LISTS = {"SEMGATE_INDEX_LISTS_FROM": "256", "SEMGATE_INDEX_PROBE": "2",
         "SEMGATE_VERIFY": "off"}


def question(i):
    return f"Which of the catalogue's items is number {i}, shelf {i * 7919 % 997}?"


def lookups(g, upstream, similarity, tag):
    """Ask a paraphrase of every SAMPLE question whose embedding has the
    given similarity to the stored question's; returns (served, responses)."""
    out = []
    for i in SAMPLE:
        text = f"{tag} {question(i)}"
        upstream.set_similarity(text, question(i), similarity)
        out.append((i, g.chat(user(text))))
    return out


def test_a_clustered_partition_answers_its_stored_questions(make_gateway, redis_db, upstream):
    g = make_gateway(**LISTS)
    with ThreadPoolExecutor(8) as ex:
        first = list(ex.map(lambda i: g.chat(user(question(i))), range(N)))
    assert all(r.status_code == 200 for r in first), [r.text for r in first[:3]]
    assert all(r.headers["X-Semgate-Cache"] == "miss" for r in first)
    ids = {i: r.headers["X-Semgate-Entry"] for i, r in enumerate(first)}
    g.settle()
    wait_until(lambda: metric(g, "semgate_index_entries") == N, what="every answer indexed")
    assert metric(g, "semgate_index_listed_partitions") == 1
    assert metric(g, "semgate_index_partitions") == 1

    # the stored question's own vector: always in a list the lookup reads
    for i, r in lookups(g, upstream, 1.0, "Same vector:"):
        assert r.headers["X-Semgate-Cache"] == "hit-semantic", (i, r.headers)
        assert r.headers["X-Semgate-Entry"] == ids[i]
    # near paraphrases: nearly always (a row nearer to an unread list's
    # centroid is missed, never answered wrongly)
    near = lookups(g, upstream, 0.97, "Near:")
    served = [(i, r) for i, r in near if r.headers["X-Semgate-Cache"] == "hit-semantic"]
    print("near paraphrases served:", len(served), "of", len(near))
    assert len(served) >= 0.9 * len(near), len(served)
    assert all(r.headers["X-Semgate-Entry"] == ids[i] for i, r in served)
    assert all(r.headers["X-Semgate-Cache"] == "miss"
               for i, r in near if (i, r) not in served)
    # a question like none stored is a miss, and is stored into its list
    r = g.chat(user("Is there anything at all on the top shelf?"))
    assert r.headers["X-Semgate-Cache"] == "miss"
    g.settle()
    upstream.set_similarity("Top shelf, anything?", "Is there anything at all on the top shelf?",
                            1.0)
    r2 = g.chat(user("Top shelf, anything?"))
    assert r2.headers["X-Semgate-Cache"] == "hit-semantic"
    assert r2.headers["X-Semgate-Entry"] == r.headers["X-Semgate-Entry"]

    # a gateway starting on this Redis clusters the partition as it loads it
    g.stop()
    g2 = make_gateway(**LISTS)
    assert metric(g2, "semgate_index_listed_partitions") == 1
    for i, r in lookups(g2, upstream, 1.0, "Again:"):
        assert r.headers["X-Semgate-Cache"] == "hit-semantic", (i, r.headers)
        assert r.headers["X-Semgate-Entry"] == ids[i]


def test_small_partitions_and_exact_mode_have_no_lists(make_gateway, redis_db, upstream):
    g = make_gateway(SEMGATE_INDEX_LISTS_FROM="0", SEMGATE_VERIFY="off")
    for i in range(40):
        assert g.chat(user(question(i))).headers["X-Semgate-Cache"] == "miss"
    g.settle()
    assert metric(g, "semgate_index_listed_partitions") == 0
    g.stop()
    g2 = make_gateway(**LISTS)   # 40 rows: below the 256 it would cluster at
    assert metric(g2, "semgate_index_entries") == 40
    assert metric(g2, "semgate_index_listed_partitions") == 0

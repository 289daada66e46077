"""``python -m service.catalog_import``: a file of users or items into a running catalog
(the real app in process; the command's HTTP client is the test client)."""

from __future__ import annotations

import pandas as pd
import pytest
from support.servers import loaded_client

from service.catalog_import import main

URL = "http://testserver"


@pytest.fixture(scope="module")
def client(artifacts, compile_cache, tmp_path_factory):
    with loaded_client(
        artifacts.v1, compile_cache, catalog_dir=tmp_path_factory.mktemp("catalog")
    ) as c:
        yield c


def test_a_csv_of_items(client, tmp_path, capsys):
    path = tmp_path / "items.csv"
    path.write_text(
        "item_id,title,genres,price\n"
        "i-1,Kolya (1996),Comedy|Drama,3\n"
        "i-2,Heat (1995),,4\n"  # no genres: the field is left out
        "007,Toy Story (1995),Animation,5\n"  # an id kept as written
        "i-1,Kolya (1996) restored,Comedy,6\n"  # repeated: the later row is kept
    )
    assert main(["--url", URL, "--kind", "items", "--input", str(path)], client=client) == 0
    out = capsys.readouterr().out
    assert "imported 3 items" in out and "1 repeated ids" in out and "['price']" in out
    assert "local 3" in out
    one = client.get("/v1/items/i-1").json()
    assert one["fields"] == {"title": "Kolya (1996) restored", "genres": ["Comedy"]}
    assert one["origin"] == "bulk"
    assert client.get("/v1/items/i-2").json()["fields"] == {"title": "Heat (1995)"}
    assert client.get("/v1/items/007").status_code == 200


def test_users_from_parquet_in_small_batches(client, tmp_path, capsys):
    path = tmp_path / "users.parquet"
    pd.DataFrame(
        {
            "reader": [f"r-{i}" for i in range(5)],
            "user.age": [20.0, 30.0, None, 50.0, 60.0],
            "occupation": ["doctor", "artist", "student", "writer", "lawyer"],
        }
    ).to_parquet(path)
    argv = ["--url", URL, "--kind", "users", "--input", str(path), "--id-column", "reader"]
    assert main([*argv, "--batch-size", "2"], client=client) == 0
    assert "imported 5 users" in capsys.readouterr().out
    assert client.get("/v1/users/r-0").json()["fields"] == {"age": 20.0, "occupation": "doctor"}
    assert client.get("/v1/users/r-2").json()["fields"] == {"occupation": "student"}


def test_a_refused_row_names_its_row_and_column(client, tmp_path, capsys):
    path = tmp_path / "users.csv"
    path.write_text("user_id,age,occupation\nok-1,34,doctor\nbad-1,very old,artist\n")
    argv = ["--url", URL, "--kind", "users", "--input", str(path), "--batch-size", "1"]
    assert main(argv, client=client) == 2
    err = capsys.readouterr().err
    assert "row 1 (0-based, header excluded), user 'bad-1', column 'age'" in err
    assert "1 users imported before it" in err
    assert client.get("/v1/users/ok-1").status_code == 200
    assert client.get("/v1/users/bad-1").status_code == 404


def test_a_file_without_the_id_column_or_a_service_down(client, tmp_path, capsys):
    path = tmp_path / "items.csv"
    path.write_text("isbn,title\n1,a\n")
    assert main(["--url", URL, "--kind", "items", "--input", str(path)], client=client) == 2
    assert "--id-column" in capsys.readouterr().err
    argv = ["--url", "http://127.0.0.1:9", "--kind", "items", "--input", str(path)]
    assert main([*argv, "--id-column", "isbn", "--timeout", "2"]) == 1
    assert "cannot reach" in capsys.readouterr().err

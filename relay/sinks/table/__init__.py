"""The table sink: events as rows of a PostgreSQL or MySQL/MariaDB table, the way MinIO's and
RustFS's SQL targets write them. sink.py is the sink itself, the same on both servers; a
dialect module per server (postgres.py, mysql.py) is what the `postgres` and `mysql` sink
types load: its client library, its configuration and its SQL (postgres.sql, mysql.sql).
"""

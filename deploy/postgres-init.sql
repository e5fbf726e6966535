-- Run once by the postgres container on an empty data volume (docker-entrypoint-initdb.d):
-- Dagster uses the database named by POSTGRES_DB; MLflow and the lakehouse's DuckLake catalog
-- (DD_LAKEHOUSE_CATALOG_DSN) get their own.
CREATE DATABASE mlflow;
CREATE DATABASE lakehouse;

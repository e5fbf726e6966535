-- Run once by the postgres container on an empty data volume (docker-entrypoint-initdb.d):
-- Dagster uses the database named by POSTGRES_DB; MLflow gets its own.
CREATE DATABASE mlflow;

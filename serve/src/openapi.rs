//! The OpenAPI 3.1 description of the routes this model offers, written out by hand (a few
//! schemas; no derive machinery for a document this small).

use crate::routes::offered;
use crate::App;
use serde_json::{json, Value};

fn texts_schema() -> Value {
    json!({"oneOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}, "minItems": 1},
    ]})
}

fn openai_input() -> Value {
    json!({"oneOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
        {"type": "array", "items": {"type": "integer"}, "minItems": 1},
        {"type": "array", "items": {"type": "array", "items": {"type": "integer"}, "minItems": 1}, "minItems": 1},
    ]})
}

fn request_schema(path: &str) -> Option<Value> {
    Some(match path {
        "/v1/embeddings" => json!({"type": "object", "required": ["input"], "properties": {
            "input": openai_input(),
            "model": {"type": "string"},
            "encoding_format": {"enum": ["float", "base64"]},
            "dimensions": {"type": "integer"},
            "user": {"type": "string"},
        }}),
        "/v1/completions" => json!({"type": "object", "required": ["prompt"], "properties": {
            "prompt": openai_input(),
            "model": {"type": "string"},
            "max_tokens": {"type": "integer", "minimum": 1},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "top_k": {"type": "integer", "minimum": 0},
            "seed": {"type": "integer", "minimum": 0},
            "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]},
            "n": {"type": "integer", "minimum": 1, "maximum": 16},
            "stream": {"type": "boolean"},
            "stream_options": {"type": "object", "properties": {
                "include_usage": {"type": "boolean", "default": false},
            }},
        }}),
        "/embed" => json!({"type": "object", "required": ["inputs"], "properties": {
            "inputs": texts_schema(),
            "normalize": {"type": "boolean", "default": true},
            "truncate": {"type": "boolean", "default": false},
        }}),
        "/rerank" => json!({"type": "object", "required": ["query", "texts"], "properties": {
            "query": {"type": "string", "minLength": 1},
            "texts": texts_schema(),
            "raw_scores": {"type": "boolean", "default": false},
            "return_text": {"type": "boolean", "default": false},
        }}),
        "/predict" => json!({"type": "object", "required": ["inputs"], "properties": {
            "inputs": {"oneOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2},
                {"type": "array", "minItems": 1, "items": {"oneOf": [
                    {"type": "string"},
                    // A text alone (`["a"]`, TEI's batch of single texts) or a pair.
                    {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
                ]}},
            ]},
            "raw_scores": {"type": "boolean", "default": false},
            "truncate": {"type": "boolean", "default": false},
        }}),
        "/tokenize" => json!({"type": "object", "required": ["inputs"], "properties": {
            "inputs": texts_schema(),
            "add_special_tokens": {"type": "boolean", "default": true},
        }}),
        "/v2/models/{name}/infer" => {
            json!({"type": "object", "required": ["inputs"], "properties": {
                "id": {"type": "string"},
                "inputs": {"type": "array", "minItems": 1, "items": {"type": "object",
                    "required": ["name", "shape", "datatype", "data"], "properties": {
                        "name": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
                        "datatype": {"enum": ["INT64", "INT32"]},
                        "data": {"type": "array"},
                    }}},
                "outputs": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
            }})
        }
        _ => return None,
    })
}

fn error_schema() -> Value {
    json!({"type": "object", "properties": {"error": {"type": "object", "properties": {
        "message": {"type": "string"},
        "type": {"type": "string"},
        "code": {"type": "string"},
        "param": {"type": ["string", "null"]},
    }}}})
}

pub fn document(app: &App) -> Value {
    let mut paths = serde_json::Map::new();
    for r in offered(app) {
        let mut op = json!({
            "summary": r.summary,
            "responses": {
                "200": {"description": "OK"},
                "400": {"description": "Bad request", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "401": {"description": "Missing or wrong API key"},
                "503": {"description": "Queue full (Retry-After) or not ready"},
            },
        });
        let params: Vec<Value> = ["{name}", "{model}"]
            .iter()
            .filter(|p| r.path.contains(*p))
            .map(|p| json!({"name": p.trim_matches(|c| c == '{' || c == '}'), "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !params.is_empty() {
            op["parameters"] = json!(params);
        }
        if let Some(schema) = request_schema(r.path) {
            op["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": schema}}});
        }
        if r.path == "/v1/completions" {
            op["responses"]["200"] = json!({"description": "A completion, or with stream: true server-sent events ending with `data: [DONE]`"});
        }
        let method = r.method.as_str().to_lowercase();
        paths.entry(r.path.to_string()).or_insert_with(|| json!({}))[method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": format!("cranformer serve: {}", app.name),
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!("{} ({}) served by cranformer; tasks: {}",
                app.info.architecture(), app.info.model_type(), app.tasks().join(", ")),
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": error_schema()},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    })
}

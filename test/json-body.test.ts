import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseJsonBody } from '../src/http/json-body.ts';

const parse = (text: string) => parseJsonBody(Buffer.from(text, 'utf8'));

/**
 * Most bodies take the native parser after a scan; what the scan cannot clear goes to the
 * AST walk. Both must give the same value, and a refusal must still carry the walk's
 * position (line and column), which only the walk knows.
 */
describe('request bodies: the quick path and the walk agree', () => {
  it('a plain body parses to the value JSON.parse gives', () => {
    const bodies = [
      '{"key":"k-1","changes":{"a":[{"sql":"INSERT INTO t (k, v) VALUES (?, ?)","params":["k","v"]}]}}',
      '{"s":"a\\"{,\\\\","t":"\\\\","u":"\\\\u0041"}',
      '{"e":1E5,"f":-1.5e-3, "g" : [ ] , "h":{}, "i":12.50, "j":0.1, "k":9007199254740992}',
      '{"a":{"b":1},"b":{"a":2}}',
      '{"constructor":1}',
      ' 12 ',
      'null',
      `${'['.repeat(100)}${']'.repeat(100)}`,
    ];
    for (const body of bodies) assert.deepEqual(parse(body), JSON.parse(body), body);
  });

  it('-0 stays -0', () => {
    assert.ok(Object.is((parse('{"n":-0}') as { n: number }).n, -0));
  });

  it('an escaped surrogate pair is kept; a lone one is refused', () => {
    assert.equal(parse('"\\ud83d\\ude42"'), '🙂');
    assert.throws(() => parse('{"s":"\\ud800"}'), /the string at \$\.s \(line 1, column 6\) has an unpaired UTF-16 surrogate escape/);
  });

  it('a member named twice is refused wherever it is and however it is spelled', () => {
    assert.throws(() => parse('{"a":1,"\\u0061":2}'), /the member \$\.a twice \(line 1, column 8\)/);
    assert.throws(() => parse('{"a":{"b":1},"b":2,"a":3}'), /the member \$\.a twice \(line 1, column 20\)/);
    assert.throws(() => parse('{"x":[1,{"y":2,"y":3}]}'), /the member \$\.x\[1\]\.y twice \(line 1, column 16\)/);
  });

  it('numbers that would not survive as doubles are refused with their position', () => {
    assert.throws(() => parse('{"n":9007199254740993}'), /the number 9007199254740993 at \$\.n \(line 1, column 6\)/);
    assert.throws(() => parse('{"n":1e400}'), /the number 1e400 at \$\.n \(line 1, column 6\)/);
    assert.throws(() => parse('{"n":1.00000000000000000001}'), /would become 1\)/);
  });

  it('members that reach a prototype are refused', () => {
    assert.throws(() => parse('{"__proto__":1}'), /member named __proto__/);
    assert.throws(() => parse('{"constructor":{"prototype":1}}'), /constructor\.prototype/);
  });

  it('invalid JSON is refused with the walk’s message', () => {
    assert.throws(() => parse('{"a":1,}'), /the body is not valid JSON: .*\(1:8\)/);
  });
});

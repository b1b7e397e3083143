using Amazon;
using Amazon.Runtime;
using Amazon.Runtime.Credentials;
using Amazon.S3;
using Amazon.S3.Model;

namespace MountQcow.Storage;

/// <summary>
/// <c>s3://bucket/key</c>: turned into a pre-signed https (or, for an http endpoint, http) GET URL
/// by AWSSDK.S3, with the standard AWS settings (environment variables, the shared profile, the
/// region, <c>AWS_ENDPOINT_URL</c> for S3-compatible stores), then read as any URL is. Signing
/// happens here, locally; no request is made until the ranged reads.
/// </summary>
internal static class S3Location
{
    public static bool IsS3(string location) => location.StartsWith("s3://", StringComparison.OrdinalIgnoreCase);

    /// <summary>A GET URL for the object, valid for a day (a mount longer than that needs remounting).</summary>
    /// <exception cref="ImageIOException">The location names no bucket or key, or no credentials are set.</exception>
    public static string PreSign(string location)
    {
        var url = new Uri(location);
        string bucket = url.Host, key = Uri.UnescapeDataString(url.AbsolutePath.TrimStart('/'));
        if (bucket.Length == 0 || key.Length == 0) throw new ImageIOException($"{location}: an s3 location is s3://BUCKET/KEY");
        string? endpoint = Environment.GetEnvironmentVariable("AWS_ENDPOINT_URL_S3") ?? Environment.GetEnvironmentVariable("AWS_ENDPOINT_URL");
        string region = Environment.GetEnvironmentVariable("AWS_REGION") ?? Environment.GetEnvironmentVariable("AWS_DEFAULT_REGION") ?? "us-east-1";
        var config = new AmazonS3Config { RegionEndpoint = RegionEndpoint.GetBySystemName(region) };
        if (endpoint is not null)
        {
            config.ServiceURL = endpoint;
            config.ForcePathStyle = true; // S3-compatible stores name buckets in the path
            config.AuthenticationRegion = region;
        }
        AWSCredentials credentials;
        try
        {
            credentials = DefaultAWSCredentialsIdentityResolver.GetCredentials();
        }
        catch (Exception e) when (e is AmazonClientException or AmazonServiceException)
        {
            throw new ImageIOException($"{location}: no AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile)");
        }
        using var client = new AmazonS3Client(credentials, config);
        return client.GetPreSignedURL(new GetPreSignedUrlRequest
        {
            BucketName = bucket,
            Key = key,
            Verb = HttpVerb.GET,
            Expires = DateTime.UtcNow.AddDays(1),
            Protocol = endpoint is not null && endpoint.StartsWith("http://", StringComparison.OrdinalIgnoreCase) ? Protocol.HTTP : Protocol.HTTPS,
        });
    }
}
